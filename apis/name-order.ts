// REAPI orders the entries of a Directory by the UTF-8 bytes of their names. JavaScript strings
// compare by UTF-16 code units, which is the same order except around supplementary characters
// (U+10000 and up, stored as surrogates 0xD800-0xDFFF): UTF-16 puts them before U+E000-U+FFFF,
// UTF-8 after. Comparing code units and correcting that one case needs no byte copies.

/** Negative, zero or positive as `a` sorts before, with or after `b` in UTF-8 byte order. */
export function compareUtf8(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    const xSurrogate = x >= 0xd800 && x <= 0xdfff;
    const ySurrogate = y >= 0xd800 && y <= 0xdfff;
    if (xSurrogate && !ySurrogate && y >= 0xe000) return 1;
    if (ySurrogate && !xSurrogate && x >= 0xe000) return -1;
    return x - y;
  }
  return a.length - b.length;
}
