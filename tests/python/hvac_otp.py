"""hvac's generic writes against the OTP API: creds for a role, then verify
without a token, as vault-ssh-helper does."""
import os
import sys
import uuid

import hvac

addr = os.environ["GATEPASS_ADDR"]
ca = os.environ["GATEPASS_CACERT"]
root = hvac.Client(url=addr, token=os.environ["GATEPASS_TOKEN"], verify=ca)
root.write("ssh/roles/otp_key_role", key_type="otp", default_user="ubuntu", cidr_list="10.0.0.0/8")

creds = root.write("ssh/creds/otp_key_role", ip="10.1.2.3")
otp = creds["data"]["key"]
uuid.UUID(otp)
assert creds["data"]["key_type"] == "otp", creds
assert creds["data"]["username"] == "ubuntu", creds
assert creds["lease_id"].startswith("ssh/creds/otp_key_role/"), creds

anon = hvac.Client(url=addr, verify=ca)
ok = anon.write("ssh/verify", otp=otp)
assert ok["data"] == {"username": "ubuntu", "ip": "10.1.2.3", "role_name": "otp_key_role"}, ok
try:
    anon.write("ssh/verify", otp=otp)
except hvac.exceptions.InvalidRequest as e:
    assert "OTP not found" in str(e), e
else:
    sys.exit("a used OTP verified twice")
try:
    root.write("ssh/creds/otp_key_role", ip="192.168.0.1")
except hvac.exceptions.InvalidRequest:
    pass
else:
    sys.exit("an IP outside cidr_list got an OTP")
print("hvac otp: OK")
