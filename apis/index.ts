// Short names for the generated REAPI / Google protobuf code (apis/generated, built by apis/generate.js).
// Each alias is both a value (rex.Digest.encode) and a type namespace (rex.IDigest, rex.Digest).
// int64 fields are plain JS numbers (exact up to 2^53).
import proto = require('./generated/proto');

export import rex = proto.build.bazel.remote.execution.v2;
export import semver = proto.build.bazel.semver;
export import bytestream = proto.google.bytestream;
export import longrunning = proto.google.longrunning;
export import rpc = proto.google.rpc;
export import protobuf = proto.google.protobuf;
export import reapi = proto.reapi;
