#!/usr/bin/python3
# popgate tests — a real OAuth 2.0 authorization server on 127.0.0.1 for integration tests.
#
# Built on Authlib's Flask AuthorizationServer (Debian python3-authlib 1.2) and its grant
# classes and endpoints: refresh_token (rotation switchable), client_credentials, the
# device grant (RFC 8628), authorization_code with PKCE S256 (RFC 7636) for loopback
# redirects (RFC 8252 7.3), RFC 7662 introspection (what Dovecot's oauth2 passdb calls)
# and RFC 7009 revocation. Error responses are Authlib's (invalid_grant, invalid_client,
# unsupported_grant_type, authorization_pending, slow_down, expired_token, ...).
#
# The "user" steps a browser would do are endpoints the test calls:
#   GET /device?user_code=CODE&approve_as=USER   (or &deny=1) approves a device code;
#   GET /authorize?...&approve_as=USER           redirects to redirect_uri with a code.
# Test-only: GET /stats (request counts), POST /admin (JSON: rotation, lifetimes,
# clients, token_delay_ms, token_fail_status).
#
# Run with Debian's /usr/bin/python3:
#   oauth2-server.py --dir DIR --config FILE.json [--port N] [--tls-cert PEM --tls-key PEM]
# It binds 127.0.0.1:N (0: an ephemeral port; https with the given certificate), then
# writes DIR/ready (the port, renamed
# into place) and logs one line per request to DIR/oauth2-server.log — never a token,
# code or secret value. Tokens live in memory only. Stop it with SIGTERM.
#
# SPDX-License-Identifier: GPL-3.0-or-later

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
import urllib.parse

# Plain http is fine on the loopback; Authlib refuses it without this.
os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"

from authlib.common.security import generate_token  # noqa: E402
from authlib.integrations.flask_oauth2 import AuthorizationServer  # noqa: E402
from authlib.oauth2.rfc6749 import grants  # noqa: E402
from authlib.oauth2.rfc6749.util import list_to_scope, scope_to_list  # noqa: E402
from authlib.oauth2.rfc6750 import BearerTokenGenerator  # noqa: E402
from authlib.oauth2.rfc7009 import RevocationEndpoint  # noqa: E402
from authlib.oauth2.rfc7636 import CodeChallenge  # noqa: E402
from authlib.oauth2.rfc7662 import IntrospectionEndpoint  # noqa: E402
from authlib.oauth2.rfc8628 import (  # noqa: E402
    DeviceAuthorizationEndpoint,
    DeviceCodeGrant,
    DeviceCredentialDict,
)
from flask import Flask, jsonify, request  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
ALL_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")

# One lock for all state: requests are short, and it makes every grant atomic (two
# concurrent refreshes with rotation cannot both succeed).
LOCK = threading.RLock()


class Settings:
    def __init__(self, conf):
        self.access_token_lifetime = int(conf.get("access_token_lifetime", 3600))
        self.refresh_token_lifetime = int(conf.get("refresh_token_lifetime", 0))  # 0: none
        self.rotation = bool(conf.get("rotation", False))
        self.device_interval = int(conf.get("device_interval", 5))
        self.device_code_lifetime = int(conf.get("device_code_lifetime", 600))
        self.slow_down_increment = int(conf.get("slow_down_increment", 5))
        self.token_delay_ms = int(conf.get("token_delay_ms", 0))
        # Not 0: the token endpoint answers every request with this HTTP status (a broken
        # provider) and {"error": "temporarily_unavailable"}.
        self.token_fail_status = int(conf.get("token_fail_status", 0))

    def update(self, conf):
        for key, value in conf.items():
            if key == "clients":
                continue
            if not hasattr(self, key):
                raise ValueError("unknown setting " + key)
            setattr(self, key, type(getattr(self, key))(value))


class Client:
    """A registered client (Authlib's ClientMixin)."""

    def __init__(self, conf):
        self.client_id = conf["client_id"]
        self.client_secret = conf.get("client_secret")
        default_methods = ["client_secret_basic", "client_secret_post"] if self.client_secret else ["none"]
        self.auth_methods = conf.get("auth_methods", default_methods)
        self.grant_types = conf.get(
            "grant_types", ["refresh_token", DEVICE_GRANT, "authorization_code"])
        self.redirect_uris = conf.get("redirect_uris", ["http://127.0.0.1/callback"])
        # None: any scope asked for is granted (as a provider's mail scope would be).
        self.scope = conf.get("scope")
        # client_credentials tokens stand for this user (the mailbox of an app-only client).
        self.username = conf.get("username")

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope):
        if not scope:
            return ""
        if self.scope is None:
            return scope
        allowed = set(scope_to_list(self.scope))
        return list_to_scope([s for s in scope_to_list(scope) if s in allowed])

    def check_redirect_uri(self, redirect_uri):
        # RFC 8252 7.3: for a loopback redirect, any port matches.
        got = urllib.parse.urlsplit(redirect_uri)
        for registered in self.redirect_uris:
            want = urllib.parse.urlsplit(registered)
            if redirect_uri == registered:
                return True
            if (want.scheme == "http" and want.hostname in LOOPBACK_HOSTS
                    and got.scheme == "http" and got.hostname == want.hostname
                    and got.path == want.path and got.query == want.query):
                return True
        return False

    def check_client_secret(self, client_secret):
        return self.client_secret is not None and secrets.compare_digest(
            self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method, endpoint):
        return method in self.auth_methods

    def check_response_type(self, response_type):
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type):
        return grant_type in self.grant_types


class Token(dict):
    """An issued token (Authlib's TokenMixin). Keys: access_token, refresh_token (or
    absent), client_id, user, scope, issued_at, expires_in, grant (the authorization it
    came from: revoking a refresh token ends every token of that grant)."""

    def check_client(self, client):
        return client is not None and self["client_id"] == client.get_client_id()

    def get_scope(self):
        return self.get("scope", "")

    def get_expires_in(self):
        return self.get("expires_in")

    def is_expired(self):
        return self["issued_at"] + self["expires_in"] <= time.time()

    def is_revoked(self):
        return self.get("access_revoked", False)

    def refresh_usable(self):
        if self.get("refresh_revoked") or "refresh_token" not in self:
            return False
        lifetime = self.get("refresh_lifetime", 0)
        return lifetime <= 0 or self["issued_at"] + lifetime > time.time()


class AuthorizationCode(dict):
    def get_redirect_uri(self):
        return self["redirect_uri"]

    def get_scope(self):
        return self.get("scope", "")


class Store:
    def __init__(self, settings):
        self.settings = settings
        self.clients = {}
        self.access = {}       # access_token → Token
        self.refresh = {}      # refresh_token → Token
        self.codes = {}        # authorization code → AuthorizationCode
        self.devices = {}      # device_code → DeviceCredentialDict
        self.user_grants = {}  # user_code → (user, approved)
        self.stats = {"token": {}, "token_ok": {}, "token_error": {}, "introspection": 0,
                      "introspection_active": 0, "revocation": 0, "device_authorization": 0,
                      "authorization": 0}

    def count(self, key, sub=None):
        if sub is None:
            self.stats[key] += 1
        else:
            self.stats[key][sub] = self.stats[key].get(sub, 0) + 1


STORE = None  # set in main()


def save_token(token, req):
    """Authlib calls this for every token it issues."""
    client = req.client
    if req.user is not None:
        user = req.user
    else:
        user = client.username  # client_credentials
    credential = req.credential
    grant = credential["grant"] if isinstance(credential, Token) else generate_token(16)
    record = Token(token)
    record.update(client_id=client.get_client_id(), user=user, issued_at=time.time(),
                  grant=grant, refresh_lifetime=STORE.settings.refresh_token_lifetime)
    record.setdefault("expires_in", STORE.settings.access_token_lifetime)
    STORE.access[record["access_token"]] = record
    if "refresh_token" in record:
        STORE.refresh[record["refresh_token"]] = record


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_AUTH_METHODS

    @property
    def INCLUDE_NEW_REFRESH_TOKEN(self):  # noqa: N802 (Authlib's name)
        return STORE.settings.rotation

    def issue_token(self, user, credential):
        # A fresh access token lifetime (Authlib would copy the old token's expires_in).
        return self.generate_token(user=user, scope=self.request.scope or credential.get_scope(),
                                   include_refresh_token=self.INCLUDE_NEW_REFRESH_TOKEN)

    def authenticate_refresh_token(self, refresh_token):
        token = STORE.refresh.get(refresh_token)
        if token is not None and token.refresh_usable():
            return token
        return None

    def authenticate_user(self, credential):
        return credential["user"]

    def revoke_old_credential(self, credential):
        if STORE.settings.rotation:
            credential["refresh_revoked"] = True


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class S256CodeChallenge(CodeChallenge):
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def get_authorization_code_challenge(self, authorization_code):
        return authorization_code.get("code_challenge")

    def get_authorization_code_challenge_method(self, authorization_code):
        return authorization_code.get("code_challenge_method")


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_AUTH_METHODS

    def save_authorization_code(self, code, req):
        STORE.codes[code] = AuthorizationCode(
            code=code, client_id=req.client.get_client_id(), redirect_uri=req.redirect_uri,
            scope=req.scope, user=req.user, issued_at=time.time(),
            code_challenge=req.data.get("code_challenge"),
            code_challenge_method=req.data.get("code_challenge_method"))

    def query_authorization_code(self, code, client):
        item = STORE.codes.get(code)
        if (item is not None and item["client_id"] == client.get_client_id()
                and item["issued_at"] + 600 > time.time()):
            return item
        return None

    def delete_authorization_code(self, authorization_code):
        STORE.codes.pop(authorization_code["code"], None)

    def authenticate_user(self, authorization_code):
        return authorization_code["user"]


class DeviceGrant(DeviceCodeGrant):
    def query_device_credential(self, device_code):
        return STORE.devices.get(device_code)

    def query_user_grant(self, user_code):
        return STORE.user_grants.get(user_code)

    def should_slow_down(self, credential):
        # RFC 8628 3.5: polling faster than the interval → slow_down, and the interval
        # grows for this and every later request.
        now = time.time()
        last = credential.get("last_poll")
        credential["last_poll"] = now
        if last is not None and now - last < credential["interval"]:
            credential["interval"] += STORE.settings.slow_down_increment
            return True
        return False

    def create_token_response(self):
        result = super().create_token_response()
        # A device code is good for one token.
        STORE.devices.pop(self.request.credential["device_code"], None)
        STORE.user_grants.pop(self.request.credential["user_code"], None)
        return result


class DeviceEndpoint(DeviceAuthorizationEndpoint):
    def get_verification_uri(self):
        return request.host_url + "device"

    def create_endpoint_response(self, req):
        self.EXPIRES_IN = STORE.settings.device_code_lifetime
        self.INTERVAL = STORE.settings.device_interval
        return super().create_endpoint_response(req)

    def save_device_credential(self, client_id, scope, data):
        STORE.devices[data["device_code"]] = DeviceCredentialDict(
            client_id=client_id, scope=scope, expires_at=time.time() + data["expires_in"],
            **data)


class TokenLookup:
    def query_token(self, token_string, token_type_hint):
        if token_type_hint == "refresh_token":
            return STORE.refresh.get(token_string)
        if token_type_hint == "access_token":
            return STORE.access.get(token_string)
        return STORE.access.get(token_string) or STORE.refresh.get(token_string)


class Revocation(TokenLookup, RevocationEndpoint):
    CLIENT_AUTH_METHODS = ALL_AUTH_METHODS

    def revoke_token(self, token, req):
        # RFC 7009 2.1: revoking a refresh token ends its grant's access tokens too.
        if req.form.get("token_type_hint") == "access_token":
            token["access_revoked"] = True
            return
        for item in list(STORE.access.values()):
            if item["grant"] == token["grant"]:
                item["access_revoked"] = True
                item["refresh_revoked"] = True


class Introspection(TokenLookup, IntrospectionEndpoint):
    """Dovecot's oauth2 passdb POSTs token=... without client credentials; on this
    loopback-only server an anonymous resource server may introspect (a client that does
    authenticate must do so correctly)."""

    CLIENT_AUTH_METHODS = ALL_AUTH_METHODS

    def authenticate_endpoint_client(self, req):
        if "Authorization" not in req.headers and not req.client_id:
            req.client = None
            return None
        return super().authenticate_endpoint_client(req)

    def query_token(self, token_string, token_type_hint):
        token = super().query_token(token_string, token_type_hint)
        # A refresh token is only active while it can still be used.
        if token is not None and token.get("refresh_token") == token_string \
                and token.get("access_token") != token_string and not token.refresh_usable():
            return None
        return token

    def check_permission(self, token, client, req):
        return True

    def introspect_token(self, token):
        return {
            "active": True,
            "client_id": token["client_id"],
            "token_type": "Bearer",
            "username": token["user"],
            "sub": token["user"],
            "scope": token.get_scope(),
            "exp": int(token["issued_at"] + token["expires_in"]),
            "iat": int(token["issued_at"]),
        }


def query_client(client_id):
    return STORE.clients.get(client_id)


def create_app(store):
    app = Flask("oauth2-server")
    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_token_generator("default", BearerTokenGenerator(
        lambda **kw: generate_token(42), lambda **kw: generate_token(48),
        lambda client, grant_type: store.settings.access_token_lifetime))
    server.register_grant(RefreshTokenGrant)
    server.register_grant(ClientCredentialsGrant)
    server.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(required=True)])
    server.register_grant(DeviceGrant)
    server.register_endpoint(DeviceEndpoint)
    server.register_endpoint(Revocation)
    server.register_endpoint(Introspection)

    @app.route("/token", methods=["POST"])
    def token():
        grant_type = request.form.get("grant_type", "")
        if store.settings.token_delay_ms > 0:
            time.sleep(store.settings.token_delay_ms / 1000.0)
        with LOCK:
            store.count("token", grant_type)
            if store.settings.token_fail_status:
                store.count("token_error", grant_type)
                return jsonify(error="temporarily_unavailable"), store.settings.token_fail_status
            response = server.create_token_response()
            store.count("token_ok" if response.status_code == 200 else "token_error", grant_type)
            return response

    @app.route("/device_authorization", methods=["POST"])
    def device_authorization():
        with LOCK:
            store.count("device_authorization")
            return server.create_endpoint_response(DeviceEndpoint.ENDPOINT_NAME)

    @app.route("/device", methods=["GET", "POST"])
    def device():
        """The user's browser at the verification URI: approve (or deny) a user code."""
        user_code = request.values.get("user_code", "")
        user = request.values.get("approve_as")
        with LOCK:
            pending = any(d["user_code"] == user_code and not d.is_expired()
                          for d in store.devices.values())
            if not pending:
                return jsonify(error="unknown or expired user_code"), 404
            if request.values.get("deny"):
                store.user_grants[user_code] = (None, False)
                return jsonify(approved=False)
            if not user:
                return jsonify(error="approve_as=USER or deny=1 is required"), 400
            store.user_grants[user_code] = (user, True)
            return jsonify(approved=True)

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize():
        """The consent page: approve_as=USER grants, deny=1 refuses, neither shows it."""
        user = request.values.get("approve_as")
        with LOCK:
            store.count("authorization")
            if user is None and not request.values.get("deny"):
                try:
                    grant = server.get_consent_grant(end_user=None)
                except Exception as error:  # an OAuth2Error: show it as Authlib words it
                    return jsonify(error=getattr(error, "error", "invalid_request"),
                                   error_description=getattr(error, "description", "")), 400
                return jsonify(consent_for=grant.client.get_client_id())
            return server.create_authorization_response(grant_user=user)

    @app.route("/introspect", methods=["POST"])
    def introspect():
        with LOCK:
            store.count("introspection")
            response = server.create_endpoint_response(Introspection.ENDPOINT_NAME)
            if response.status_code == 200 and response.get_json().get("active"):
                store.count("introspection_active")
            return response

    @app.route("/revoke", methods=["POST"])
    def revoke():
        with LOCK:
            store.count("revocation")
            return server.create_endpoint_response(Revocation.ENDPOINT_NAME)

    @app.route("/stats", methods=["GET"])
    def stats():
        with LOCK:
            return jsonify(store.stats)

    @app.route("/issued", methods=["GET"])
    def issued():
        """Every access and refresh token issued so far (for tests that grep logs for
        them); a test server only."""
        with LOCK:
            return jsonify(access=list(store.access), refresh=list(store.refresh))

    @app.route("/admin", methods=["POST"])
    def admin():
        conf = request.get_json(force=True, silent=True)
        if not isinstance(conf, dict):
            return jsonify(error="a JSON object is required"), 400
        with LOCK:
            try:
                store.settings.update(conf)
                for item in conf.get("clients", []):
                    store.clients[item["client_id"]] = Client(item)
            except (ValueError, KeyError, TypeError) as error:
                return jsonify(error=str(error)), 400
            return jsonify(ok=True)

    return app


def install_request_log(app, path):
    """One line per request: method, path, form field names that say what it was, the
    status and the OAuth error code. Values of tokens, codes and secrets never appear."""
    log = logging.getLogger("oauth2-server")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    # Werkzeug logs query strings; Authlib logs issued tokens at DEBUG. Neither gets out.
    logging.getLogger("werkzeug").disabled = True
    logging.getLogger("authlib").setLevel(logging.WARNING)

    @app.after_request
    def log_request(response):
        fields = ["%s %s" % (request.method, request.path), "status=%d" % response.status_code]
        for key in ("grant_type", "token_type_hint", "approve_as"):
            value = request.values.get(key)
            if value is not None:
                fields.append("%s=%s" % (key, value))
        client_id = request.values.get("client_id") or (
            request.authorization.username if request.authorization else None)
        if client_id:
            fields.append("client_id=%s" % client_id)
        if response.is_json:
            body = response.get_json(silent=True)
            if isinstance(body, dict) and "error" in body:
                fields.append("error=%s" % body["error"])
            if isinstance(body, dict) and "active" in body:
                fields.append("active=%s" % body["active"])
        log.info(" ".join(fields))
        return response


def main():
    global STORE
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", required=True, help="writes ready and oauth2-server.log here")
    parser.add_argument("--config", required=True, help="JSON: settings and clients")
    parser.add_argument("--port", type=int, default=0, help="0: an ephemeral port")
    parser.add_argument("--tls-cert", help="serve https with this certificate (PEM)")
    parser.add_argument("--tls-key", help="and this key (PEM)")
    args = parser.parse_args()

    with open(args.config, encoding="utf-8") as f:
        conf = json.load(f)
    STORE = Store(Settings(conf))
    for item in conf.get("clients", []):
        STORE.clients[item["client_id"]] = Client(item)

    app = create_app(STORE)
    install_request_log(app, os.path.join(args.dir, "oauth2-server.log"))
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    httpd = make_server("127.0.0.1", args.port, app, threaded=True, ssl_context=tls)
    signal.signal(signal.SIGTERM, lambda signo, frame: sys.exit(0))

    ready = os.path.join(args.dir, "ready")
    with open(ready + ".tmp", "w", encoding="utf-8") as f:
        f.write("%d\n" % httpd.server_port)
    os.rename(ready + ".tmp", ready)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
