"""Creates a blob container on Azurite (or Azure) with a SharedKey-signed request.

Usage: azurite_container.py ENDPOINT ACCOUNT KEY CONTAINER [CA_FILE]
ENDPOINT is the account's blob endpoint, e.g. http://127.0.0.1:10000/devstoreaccount1.
Standard library only, so CI needs no Azure SDK to prepare its server. An existing container
is fine (409 ContainerAlreadyExists).
"""
import base64
import email.utils
import hashlib
import hmac
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

endpoint, account, key, container = sys.argv[1:5]
ca_file = sys.argv[5] if len(sys.argv) > 5 else None
url = f"{endpoint.rstrip('/')}/{container}?restype=container"
version = "2021-08-06"
date = email.utils.formatdate(usegmt=True)
path = urllib.parse.urlparse(url).path
# Put Container: no body, so Content-Length is the empty string (versions since 2015-02-21);
# the Content-Type is set because urllib would add its own.
string_to_sign = "\n".join(
    ["PUT", "", "", "", "", "application/octet-stream"] + [""] * 6 + [f"x-ms-date:{date}", f"x-ms-version:{version}", f"/{account}{path}", "restype:container"]
)
signature = base64.b64encode(
    hmac.new(base64.b64decode(key), string_to_sign.encode(), hashlib.sha256).digest()
).decode()
request = urllib.request.Request(
    url,
    method="PUT",
    data=b"",
    headers={
        "x-ms-date": date,
        "x-ms-version": version,
        "Authorization": f"SharedKey {account}:{signature}",
        "Content-Length": "0",
        "Content-Type": "application/octet-stream",
    },
)
context = ssl.create_default_context(cafile=ca_file) if ca_file else None
try:
    urllib.request.urlopen(request, context=context).close()
except urllib.error.HTTPError as e:
    if e.code != 409:
        sys.exit(f"creating container {container} at {endpoint}: HTTP {e.code}: {e.read()[:300]!r}")
