#!/usr/bin/env python3
"""Drives /docs in a running headless Chromium the way a person would: "Try it out" on signup,
a protected route refused without a token, the token pasted once into Authorize, then the
same route answered with it. Talks to Chromium's DevTools protocol over a minimal WebSocket
client (stdlib only).

Usage: docs-try-it-out.py DEVTOOLS_PORT   (Chromium already open on /docs)
"""
import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.request


class DevTools:
    def __init__(self, ws_url):
        host_port, path = ws_url.removeprefix("ws://").split("/", 1)
        host, port = host_port.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)
        assert b" 101 " in response.split(b"\r\n")[0], response
        self.next_id = 0

    def _exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "DevTools closed the connection"
            data += chunk
        return data

    def _send(self, text):
        payload = text.encode()
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", len(payload))
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _receive(self):
        message = b""
        while True:
            first, second = self._exact(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._exact(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(length)
            if first & 0x0F in (0x1, 0x0):
                message += payload
                if first & 0x80:
                    return json.loads(message)

    def evaluate(self, expression):
        self.next_id += 1
        self._send(json.dumps({
            "id": self.next_id, "method": "Runtime.evaluate",
            "params": {"expression": expression, "awaitPromise": True, "returnByValue": True},
        }))
        while True:
            reply = self._receive()
            if reply.get("id") == self.next_id:
                assert "result" in reply, reply
                result = reply["result"]
                if "exceptionDetails" in result:
                    raise AssertionError(result["exceptionDetails"].get("exception", {}).get("description"))
                return result["result"].get("value")


# In the page: helpers that act on Swagger UI's DOM as a user's clicks and typing would.
HELPERS = r"""
const sleep = ms => new Promise(r => setTimeout(r, ms));
async function waitFor(find, what) {
  for (let i = 0; i < 150; i++) { const found = find(); if (found) return found; await sleep(100); }
  throw new Error("timed out waiting for " + what);
}
function type(element, value) {
  const proto = element.tagName === "TEXTAREA" ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
  Object.getOwnPropertyDescriptor(proto, "value").set.call(element, value);
  element.dispatchEvent(new Event("input", {bubbles: true}));
  element.dispatchEvent(new Event("change", {bubbles: true}));
}
function operation(method, path) {
  return [...document.querySelectorAll(".opblock")].find(b =>
    b.querySelector(".opblock-summary-method")?.textContent === method &&
    b.querySelector(".opblock-summary-path")?.dataset.path === path);
}
async function tryItOut(method, path, body) {
  const block = await waitFor(() => operation(method, path), method + " " + path);
  if (!block.classList.contains("is-open")) block.querySelector(".opblock-summary-control").click();
  // Tried before: the button now reads "Cancel", and the earlier response goes first, so the
  // one waited for below is the new one.
  const toggle = await waitFor(() => block.querySelector(".try-out__btn"), "Try it out");
  if (!toggle.classList.contains("cancel")) toggle.click();
  const clear = block.querySelector("button.btn-clear");
  if (clear) {
    clear.click();
    await waitFor(() => !block.querySelector(".live-responses-table"), "the earlier response cleared");
  }
  // A JSON body is typed; anything else (path parameters, a file) is filled by `body(block)`.
  if (typeof body === "function") await body(block);
  else if (body !== undefined) type(await waitFor(() => block.querySelector("textarea.body-param__text"), "body"), body);
  (await waitFor(() => block.querySelector("button.execute"), "Execute")).click();
  const status = await waitFor(() => block.querySelector(".live-responses-table tbody .response-col_status"), "response");
  const shown = block.querySelector(".live-responses-table .response-col_description pre, .live-responses-table .microlight");
  const curl = block.querySelector(".curl-command")?.textContent || "";
  return {status: status.textContent.trim(), body: shown ? shown.textContent : "", curl};
}
"""


def run(devtools, script):
    return devtools.evaluate("(async () => {" + HELPERS + script + "})()")


def main():
    port = sys.argv[1]
    for _ in range(100):
        try:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
            page = next(t for t in targets if t["type"] == "page")
            break
        except (OSError, StopIteration):
            time.sleep(0.1)
    else:
        sys.exit("docs-try-it-out: Chromium's DevTools did not answer")
    devtools = DevTools(page["webSocketDebuggerUrl"])
    # The page may still be loading (no context to evaluate in yet, or the blank page before
    # it): wait until the reference has drawn its operations.
    for _ in range(200):
        try:
            if devtools.evaluate('document.querySelector(".opblock") !== null'):
                break
        except AssertionError:
            pass
        time.sleep(0.1)
    else:
        sys.exit("docs-try-it-out: /docs drew no operation within 20 s")

    signup = run(devtools, """
      return await tryItOut("POST", "/api/v1/auth/signup",
        JSON.stringify({email: "docs@example.com", password: "correct horse battery staple"}));""")
    assert signup["status"] == "201", signup
    token = json.loads(signup["body"])["token"]
    print("  /docs: signup through Try it out: 201")

    # Without a token a protected route answers its error, shown in the page as sent.
    anonymous = run(devtools, 'return await tryItOut("GET", "/api/v1/me");')
    assert anonymous["status"] == "401", anonymous
    assert json.loads(anonymous["body"])["error"]["code"] == "unauthorized", anonymous
    print("  /docs: /me without a token: 401 unauthorized, in the error shape")

    # Pasted once into Authorize; every later request carries it.
    run(devtools, """
      document.querySelector(".btn.authorize").click();
      const input = await waitFor(() => document.querySelector(".modal-ux .auth-container input"), "token field");
      type(input, %s);
      document.querySelector(".modal-ux .auth-btn-wrapper .authorize").click();
      (await waitFor(() => document.querySelector(".modal-ux .btn-done"), "Close")).click();""" % json.dumps(token))
    print("  /docs: token pasted into Authorize")

    me = run(devtools, 'return await tryItOut("GET", "/api/v1/me");')
    assert me["status"] == "200", me
    assert "Authorization: Bearer" in me["curl"], me["curl"]
    assert json.loads(me["body"])["email"] == "docs@example.com", me
    print("  /docs: /me with the pasted token: 200")
    # example-domain:begin

    # The example domain's routes, with the same token: an invoice created and listed, the stats.
    created = run(devtools, """
      return await tryItOut("POST", "/api/v1/invoices",
        JSON.stringify({customer_name: "Docs Ltd", amount_cents: 4200, currency: "EUR"}));""")
    assert created["status"] == "201", created
    assert "Authorization: Bearer" in created["curl"], created["curl"]
    print("  /docs: invoice created with the pasted token: 201")

    listed = run(devtools, 'return await tryItOut("GET", "/api/v1/invoices");')
    assert listed["status"] == "200", listed
    assert "Docs Ltd" in listed["body"], listed
    print("  /docs: invoices listed: 200, the new invoice in it")

    stats = run(devtools, 'return await tryItOut("GET", "/api/v1/stats/summary");')
    assert stats["status"] == "200", stats
    print("  /docs: stats with the same token: 200")

    # A file attached through the file picker the multipart body's schema gives.
    invoice = json.loads(created["body"])["id"]
    uploaded = run(devtools, """
      return await tryItOut("POST", "/api/v1/invoices/{id}/attachments", async block => {
        type(await waitFor(() => block.querySelector('tr[data-param-name="id"] input'), "id"), %s);
        const picker = await waitFor(() => block.querySelector('input[type="file"]'), "file picker");
        const files = new DataTransfer();
        files.items.add(new File(["%%PDF-1.7\\n%% a receipt\\n"], "receipt.pdf", {type: "application/pdf"}));
        picker.files = files.files;
        picker.dispatchEvent(new Event("change", {bubbles: true}));
        // Swagger UI takes the file on its next render; Execute before that finds no file.
        await sleep(500);
      });""" % json.dumps(invoice))
    assert uploaded["status"] == "201", uploaded
    assert json.loads(uploaded["body"])["content_type"] == "application/pdf", uploaded
    print("  /docs: a file attached through the file picker: 201")
    # example-domain:end


if __name__ == "__main__":
    main()
