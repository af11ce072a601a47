"""Sends mail through Postrider with the official Postmark and Resend Python SDKs.

usage: sdk_send.py postmark|resend BASE_URL API_KEY

Prints one JSON object: what each SDK call returned or raised, for tests/e2e/compat.rs to
check against what the relay delivered.
"""

import base64
import json
import sys

LOGO = base64.b64encode(b"\x89PNG fake logo bytes").decode()
SENDER = "The App <app@sender.test>"


def outcome(call):
    """The call's result, or the error the SDK raised, as JSON-friendly data."""
    try:
        return {"ok": call()}
    except Exception as error:  # the tests compare the SDK's own error details
        return {
            "error": type(error).__name__,
            "code": getattr(error, "error_code", None) or getattr(error, "code", None),
            "message": str(error),
        }


def postmark(base, key):
    from postmarker.core import PostmarkClient

    client = PostmarkClient(server_token=key, root_api_url=base + "/")
    out = {}
    out["plain"] = outcome(lambda: client.emails.send(
        From=SENDER,
        To='"Lee, Ann" <ann@example.test>, bob@example.test',
        Subject="pm-plain",
        TextBody="plain body from postmark",
    ))
    out["rich"] = outcome(lambda: client.emails.send(
        From=SENDER,
        To="carol@example.test",
        Cc="Dave <dave@example.test>",
        Bcc="hidden@example.test",
        ReplyTo="help@sender.test",
        Subject="pm-rich",
        HtmlBody="<p>rich html</p>",
        TextBody="rich text",
        Headers={"X-Order": "42"},
        Tag="welcome",
        Metadata={"user": "7"},
        TrackOpens=True,
        TrackLinks="HtmlAndText",
        MessageStream="outbound",
    ))

    def with_attachments():
        email = client.emails.Email(
            From=SENDER,
            To="erin@example.test",
            Subject="pm-attach",
            HtmlBody='<p>logo <img src="cid:logo@app"></p>',
        )
        email.attach_binary(b"quarterly report", "report.txt")
        email.attach(("logo.png", LOGO, "image/png", "cid:logo@app"))
        return email.send()

    out["attach"] = outcome(with_attachments)
    out["batch"] = outcome(lambda: client.emails.send_batch(
        {"From": SENDER, "To": "gina@example.test", "Subject": "pm-batch-1", "TextBody": "one"},
        {"From": SENDER, "To": "not an address", "Subject": "pm-batch-bad", "TextBody": "x"},
        {"From": SENDER, "To": "hank@example.test", "Subject": "pm-batch-2", "TextBody": "two"},
    ))
    out["suppressed"] = outcome(lambda: client.emails.send(
        From=SENDER, To="gone@example.test", Subject="pm-suppressed", TextBody="never sent"))
    out["invalid"] = outcome(lambda: client.emails.send(
        From=SENDER, To="not an address", Subject="pm-invalid", TextBody="x"))
    out["template"] = outcome(lambda: client.emails.send_with_template(
        TemplateId=1, TemplateModel={"name": "x"}, From=SENDER, To="ann@example.test"))
    bad = PostmarkClient(server_token="pr_not_a_key", root_api_url=base + "/")
    out["bad_token"] = outcome(lambda: bad.emails.send(
        From=SENDER, To="ann@example.test", Subject="pm-bad-token", TextBody="x"))
    return out


def resend_sdk(base, key):
    import resend

    resend.api_url = base
    resend.api_key = key
    out = {}
    out["plain"] = outcome(lambda: dict(resend.Emails.send({
        "from": SENDER,
        "to": "frank@example.test",
        "subject": "rs-plain",
        "text": "plain body from resend",
    })))
    out["rich"] = outcome(lambda: dict(resend.Emails.send({
        "from": SENDER,
        "to": ["ivy@example.test", "Jack <jack@example.test>"],
        "cc": "kate@example.test",
        "bcc": ["hidden@example.test"],
        "reply_to": "help@sender.test",
        "subject": "rs-rich",
        "html": "<p>rich html</p>",
        "text": "rich text",
        "headers": {"X-Order": "43"},
        "tags": [{"name": "category", "value": "welcome"}],
    })))
    out["attach"] = outcome(lambda: dict(resend.Emails.send({
        "from": SENDER,
        "to": "liam@example.test",
        "subject": "rs-attach",
        "html": '<p>logo <img src="cid:logo@app"></p>',
        "attachments": [
            {"filename": "data.txt", "content": list(b"raw byte content")},
            {"filename": "logo.png", "content": LOGO, "content_type": "image/png",
             "content_id": "logo@app"},
        ],
    })))
    out["batch"] = outcome(lambda: dict(resend.Batch.send([
        {"from": SENDER, "to": "mia@example.test", "subject": "rs-batch-1", "text": "one"},
        {"from": SENDER, "to": "noah@example.test", "subject": "rs-batch-2", "text": "two"},
    ])))
    out["batch_invalid"] = outcome(lambda: dict(resend.Batch.send([
        {"from": SENDER, "to": "mia@example.test", "subject": "rs-batch-never", "text": "x"},
        {"from": SENDER, "to": "not an address", "subject": "rs-batch-bad", "text": "x"},
    ])))
    params = {"from": SENDER, "to": "olga@example.test", "subject": "rs-idem", "text": "once"}
    out["idempotent_first"] = outcome(
        lambda: dict(resend.Emails.send(params, {"idempotency_key": "order-77"})))
    out["idempotent_again"] = outcome(
        lambda: dict(resend.Emails.send(params, {"idempotency_key": "order-77"})))
    out["suppressed"] = outcome(lambda: dict(resend.Emails.send({
        "from": SENDER, "to": "gone@example.test", "subject": "rs-suppressed", "text": "x"})))
    out["remote_attachment"] = outcome(lambda: dict(resend.Emails.send({
        "from": SENDER, "to": "ann@example.test", "subject": "rs-remote", "text": "x",
        "attachments": [{"filename": "f.pdf", "path": "https://files.invalid/f.pdf"}],
    })))
    if "ok" in out["plain"]:
        out["get"] = outcome(lambda: dict(resend.Emails.get(out["plain"]["ok"]["id"])))
    resend.api_key = "pr_not_a_key"
    out["bad_key"] = outcome(lambda: dict(resend.Emails.send({
        "from": SENDER, "to": "ann@example.test", "subject": "rs-bad-key", "text": "x"})))
    for result in out.values():
        if "ok" in result:
            result["ok"].pop("http_headers", None)
    return out


def main():
    flavour, base, key = sys.argv[1:4]
    sdk = {"postmark": postmark, "resend": resend_sdk}[flavour]
    print(json.dumps(sdk(base.rstrip("/"), key), default=str))


if __name__ == "__main__":
    main()
