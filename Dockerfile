# syntax=docker/dockerfile:1
# hsm-kms with SoftHSMv2. Build: docker build -t hsm-kms . ; run: docker compose up (see docker-compose.yml).

# ---- build: native addons (pkcs11js, better-sqlite3) and the TypeScript build -------------------------------
FROM node:20-bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# node-gyp builds against the headers that ship with this Node (no header download).
ENV npm_config_nodedir=/usr/local
COPY package.json package-lock.json ./
# npm ci refuses a lock file that lacks entries (e.g. other platforms' optional packages); npm install --no-save
# still follows the lock for every entry it has.
RUN (npm ci --no-audit --no-fund \
     || { echo "npm ci failed; falling back to npm install --no-save" >&2; npm install --no-save --no-audit --no-fund; }) \
 && node -e 'new (require("pkcs11js").PKCS11)(); new (require("better-sqlite3"))(":memory:").close()'
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

# ---- runtime ------------------------------------------------------------------------------------------------
FROM node:20-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends softhsm2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# KMS_HOST=0.0.0.0: inside the container the service must listen beyond loopback, so plain HTTP needs the override.
# The compose file publishes it on the host's loopback only. To serve HTTPS instead, mount a certificate and its key
# and set KMS_TLS_CERT_FILE and KMS_TLS_KEY_FILE (and KMS_ALLOW_PLAINTEXT_HTTP=false); see README "Configuration".
ENV NODE_ENV=production \
    KMS_DATA_DIR=/data \
    KMS_HOST=0.0.0.0 \
    KMS_ALLOW_PLAINTEXT_HTTP=true \
    KMS_PORT=8080 \
    KMS_PKCS11_LIBRARY=/usr/lib/softhsm/libsofthsm2.so \
    KMS_TOKEN_LABEL=hsm-kms \
    SOFTHSM2_CONF=/data/softhsm/softhsm2.conf \
    KMS_PIN_FILE=/data/softhsm/user-pin
COPY --from=build /app/package.json /app/package-lock.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY softhsm ./softhsm
COPY scripts/lib/init-dev-token.sh ./scripts/lib/init-dev-token.sh
# `kms token --project <id>` inside the container (docker compose exec kms kms token --project <id>).
RUN printf '#!/bin/sh\nexec node /app/dist/cli/kms.js "$@"\n' >/usr/local/bin/kms \
 && chmod 755 /usr/local/bin/kms /app/scripts/lib/init-dev-token.sh /app/softhsm/init-token.sh \
 && mkdir -p /data \
 && chown node:node /data \
 && chmod 700 /data
# The image's files stay root-owned and read-only for the service; only /data is writable.
USER node
VOLUME ["/data"]
EXPOSE 8080
CMD ["node", "dist/main.js"]
