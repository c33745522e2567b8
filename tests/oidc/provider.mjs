// A real OpenID provider (the certified `oidc-provider` package) for
// gatepass's tests, listening on 127.0.0.1 only.
//
//   node provider.mjs [PORT]      (0 or none: a free port)
//
// Prints `listening PORT` once it accepts connections. It has:
// - two people: alice (group "ops") and bob (group "dev"); the login page
//   (the package's development login) takes the account name as login;
// - client `gatepass` (secret `gatepass-secret`) for the authorization code
//   flow with PKCE and the device authorization grant (RFC 8628, pages at
//   /device); its redirect URIs are Vault's CLI listener's, and those
//   in EXTRA_REDIRECT_URIS (comma-separated), for listeners on other ports;
// - clients `ci-main`, `ci-fork` and `ci-later` (its tokens carry an `nbf`
//   an hour ahead) (secret `ci-secret`) for the client
//   credentials grant, which get JWT access tokens for audience `gatepass`
//   (or `other` with resource=urn:other) carrying CI-like claims;
// - POST /admin/rotate: a new signing key signs from then on; the old one
//   stays published. Answers {"kid": NEW}.
// - GET /admin/pem: the public key that signs now, PEM-encoded.

import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 0);

const accounts = {
  alice: { email: 'alice@example.com', groups: ['ops'] },
  bob: { email: 'bob@example.com', groups: ['dev'] },
};

const ciClaims = {
  'ci-main': { project_path: 'infra/deploy', ref: 'refs/heads/main', ref_type: 'branch' },
  'ci-fork': { project_path: 'someone/deploy', ref: 'refs/heads/feature', ref_type: 'branch' },
  // ci-main's claims in a token not valid before an hour from now (nbf).
  'ci-later': { project_path: 'infra/deploy', ref: 'refs/heads/main', ref_type: 'branch' },
};

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomUUID(), use: 'sig', alg: 'RS256' };
}

let keys = [newKey()];
let issuer;

function makeProvider() {
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'gatepass',
        client_secret: 'gatepass-secret',
        grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
        response_types: ['code'],
        redirect_uris: [
          'http://127.0.0.1:8250/oidc/callback',
          'http://localhost:8250/oidc/callback',
          ...(process.env.EXTRA_REDIRECT_URIS || '').split(',').filter(Boolean),
        ],
      },
      ...Object.keys(ciClaims).map((id) => ({
        client_id: id,
        client_secret: 'ci-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        scope: 'ci',
      })),
    ],
    jwks: { keys },
    async findAccount(_ctx, id) {
      const a = accounts[id];
      if (!a) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            preferred_username: id,
            name: id,
            email: a.email,
            groups: a.groups,
          };
        },
      };
    },
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name'],
      email: ['email'],
      groups: ['groups'],
    },
    scopes: ['openid', 'profile', 'email', 'groups', 'ci'],
    // Scope claims go in the ID token itself (gatepass reads only that).
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: true },
      // RFC 8628 for machines without a browser: the person approves at
      // /device (the package's own pages) on another device.
      deviceFlow: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:gatepass',
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resource) => ({
          scope: 'ci',
          audience: resource === 'urn:other' ? 'other' : 'gatepass',
          accessTokenFormat: 'jwt',
          accessTokenTTL: 300,
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    async extraTokenClaims(_ctx, token) {
      const claims = ciClaims[token.clientId];
      if (token.clientId === 'ci-later') {
        return { ...claims, nbf: Math.floor(Date.now() / 1000) + 3600 };
      }
      return claims || undefined;
    },
    ttl: { AccessToken: 300, ClientCredentials: 300, IdToken: 300 },
  });
  return provider;
}

let provider;

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/admin/rotate') {
    const key = newKey();
    keys = [key, ...keys];
    provider = makeProvider();
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ kid: key.kid }));
    return;
  }
  if (req.method === 'GET' && req.url === '/admin/pem') {
    // The signing key's public half as PEM, for jwt_validation_pubkeys.
    const pem = crypto.createPublicKey({ key: keys[0], format: 'jwk' })
      .export({ type: 'spki', format: 'pem' });
    res.setHeader('content-type', 'application/x-pem-file');
    res.end(pem);
    return;
  }
  provider.callback()(req, res);
});

server.listen(port, '127.0.0.1', () => {
  const actual = server.address().port;
  issuer = `http://127.0.0.1:${actual}`;
  provider = makeProvider();
  process.stdout.write(`listening ${actual}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
