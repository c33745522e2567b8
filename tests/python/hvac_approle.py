"""A client no one at gatepass wrote: hvac logs in with AppRole and uses the
generic read/write/list calls. Run by tests/tests/it/server.rs with the server's
address, CA and a root token in the environment."""
import os
import sys

import hvac

addr = os.environ["GATEPASS_ADDR"]
ca = os.environ["GATEPASS_CACERT"]
root = hvac.Client(url=addr, token=os.environ["GATEPASS_TOKEN"], verify=ca)
assert root.is_authenticated(), "root token not accepted"

# Set-up as an operator would do it with hvac.
root.sys.create_or_update_policy(
    name="app",
    policy='path "auth/userpass/users/*" { capabilities = ["create", "update", "read", "list", "delete"] }',
)
root.write("auth/approle/role/app", token_policies="app", token_ttl="1h")
role_id = root.read("auth/approle/role/app/role-id")["data"]["role_id"]
secret_id = root.write("auth/approle/role/app/secret-id")["data"]["secret_id"]

# The application logs in with AppRole.
app = hvac.Client(url=addr, verify=ca)
login = app.auth.approle.login(role_id=role_id, secret_id=secret_id)
assert login["auth"]["policies"] == ["app", "default"], login["auth"]
assert app.is_authenticated()
assert app.lookup_token()["data"]["meta"]["role_name"] == "app"

# Generic write/read/list/delete with the app token.
app.write("auth/userpass/users/dana", password="s3cret-pass", token_policies="default")
user = app.read("auth/userpass/users/dana")
assert user["data"]["token_policies"] == ["default"], user
assert app.list("auth/userpass/users")["data"]["keys"] == ["dana"]
app.delete("auth/userpass/users/dana")
assert app.read("auth/userpass/users/dana") is None
assert app.list("auth/userpass/users") is None

# Outside its policy: hvac raises Forbidden.
try:
    app.read("sys/policies/acl/app")
except hvac.exceptions.Forbidden:
    pass
else:
    sys.exit("reading a denied path did not raise Forbidden")

print("hvac: OK")
