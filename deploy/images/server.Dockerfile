# syntax=docker/dockerfile:1
# The reapi server image: `reapi serve` with the queue on Redis and blobs in S3 (or a volume).
# No Docker inside: in a farm the server only schedules (--worker off); workers run the actions.
#
#   docker build -f deploy/images/server.Dockerfile -t reapi-server:0.1.0 .     (from the repo root)

FROM node:20-bookworm AS build
WORKDIR /src
# Dependencies first: this layer is reused until package*.json change.
COPY package.json package-lock.json ./
RUN npm ci
COPY . .
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /opt/reapi
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# The data directory (file storage, or the S3 disk tier); a volume in compose and Kubernetes.
RUN mkdir -p /var/lib/reapi && chown node:node /var/lib/reapi
# The server needs no privileges: the image's unprivileged "node" user (uid 1000).
USER node
EXPOSE 8980 9090
ENTRYPOINT ["node", "/opt/reapi/dist/bin/reapi.js"]
CMD ["serve", "--listen", "0.0.0.0:8980", "--data", "/var/lib/reapi", "--worker", "off"]
