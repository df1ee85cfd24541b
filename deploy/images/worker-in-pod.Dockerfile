# syntax=docker/dockerfile:1
# The worker-in-pod image: the toolchain image (reapi-toolchain:bookworm) plus Node and reapi.
# `reapi worker --sandbox process` runs every action directly in this container, as an
# unprivileged uid per slot, so a Kubernetes pod needs neither Docker nor privileges beyond
# switching users. Actions see exactly the toolchain image's files, as in Docker mode.
#
#   deploy/toolchain/build-image.sh reapi-toolchain:bookworm        (the base, built locally)
#   docker build -f deploy/images/worker-in-pod.Dockerfile -t reapi-worker-in-pod:0.1.0 .
#
# Build with the classic builder or buildx's docker driver, which see local images as bases;
# with another builder, push reapi-toolchain:bookworm to a registry and pass
# --build-arg TOOLCHAIN_IMAGE=registry.example.com/reapi-toolchain:bookworm.
ARG TOOLCHAIN_IMAGE=reapi-toolchain:bookworm

FROM node:20-bookworm AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci
COPY . .
RUN npm run build && npm prune --omit=dev

# Only the node binary comes from here: the toolchain (bookworm, like node's image) has the
# libstdc++ and glibc it links against.
FROM node:20-bookworm-slim AS node

FROM ${TOOLCHAIN_IMAGE}
COPY --from=node /usr/local/bin/node /usr/local/bin/node
WORKDIR /opt/reapi
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/worker/runner/runner.c ./worker/runner/runner.c
ENV NODE_ENV=production \
    XDG_CACHE_HOME=/opt/reapi/cache
# The runner is compiled now, with the toolchain's gcc, so the pod can run with a read-only root
# filesystem (the worker finds it in XDG_CACHE_HOME, keyed by the source's hash).
RUN node -e "require('/opt/reapi/dist/worker/sandbox/compile-runner').compileRunner().then((p) => console.log('runner:', p))"
# Slot i runs its actions as uid 1000+i (group 1000): give those uids names, so tools that look
# the user up (whoami, ssh, some compilers' caches) work. The toolchain already has reapi (1000).
RUN for i in $(seq 1 63); do \
      grep -q "^[^:]*:x:$((1000 + i)):" /etc/passwd \
        || echo "reapi$i:x:$((1000 + i)):1000:reapi action slot $i:/nonexistent:/usr/sbin/nologin" >> /etc/passwd; \
    done
# Root, so the runners can switch to the action uids; Kubernetes drops every other capability.
USER root
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/node", "/opt/reapi/dist/bin/reapi.js"]
CMD ["worker", "--sandbox", "process"]
