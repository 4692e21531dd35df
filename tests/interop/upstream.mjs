// An upstream OpenID provider for the federation tests: npm's oidc-provider (OpenID Certified),
// with one confidential client and the accounts in a JSON file that the test may rewrite
// between sign-ins (claims are read at every sign-in). Its development login form accepts any
// password; consent is granted without a page.
//
//   node upstream.mjs <port> <client JSON> <accounts file>
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const [port, clientJson, accountsFile] = process.argv.slice(2);
const client = JSON.parse(clientJson);
const issuer = `http://localhost:${port}`;

const provider = new Provider(issuer, {
  clients: [client],
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name'],
    groups: ['groups'],
  },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  pkce: { required: () => true },
  cookies: { keys: ['federation-test-cookie-key-0123456789'] },
  async findAccount(ctx, id) {
    const accounts = JSON.parse(readFileSync(accountsFile, 'utf8'));
    const account = accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, ...account };
      },
    };
  },
  // A first-party client: consent is implied (oidc-provider's skip-consent recipe).
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const found = await ctx.oidc.provider.Grant.find(grantId);
      if (found) return found;
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile groups');
    await grant.save();
    return grant;
  },
});

provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
