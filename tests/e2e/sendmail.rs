//! `postrider sendmail` and the binary run as `sendmail`: the way PHP's `mail()`, cron and
//! scripts hand mail to `/usr/sbin/sendmail`, submitted to a real relay and delivered to a sink.

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt as _;

use crate::harness::{Finished, TestRelay, finish, free_port, wait_until};
use crate::world::{World, received};

/// Runs `program args` with `message` on standard input and `config` as `POSTRIDER_CONFIG`.
async fn run_with_input(program: &Path, args: &[&str], config: &Path, message: &[u8]) -> Finished {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("POSTRIDER_CONFIG", config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sendmail");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(message).await.expect("write message");
    drop(stdin);
    finish(child).await
}

/// `postrider sendmail ARGS` with `message` on standard input.
async fn postrider_sendmail(config: &Path, args: &[&str], message: &[u8]) -> Finished {
    let mut all = vec!["sendmail"];
    all.extend_from_slice(args);
    run_with_input(
        Path::new(env!("CARGO_BIN_EXE_postrider")),
        &all,
        config,
        message,
    )
    .await
}

/// The header block of delivered data, up to and including the CRLF before the empty line.
fn header_block(data: &str) -> &str {
    data.find("\r\n\r\n").map_or(data, |end| &data[..end + 2])
}

#[tokio::test]
async fn php_mail_style_submission_with_t_i_and_f_is_delivered_with_completed_headers() {
    let world = World::start().await;
    let relay = world.relay().await;
    // What PHP's mail() writes: LF line ends, To: and Subject: first, no Date:/Message-ID:/From:.
    let message =
        b"To: user@example.test\nSubject: php mail\n\nHello from PHP.\n.\nstill the body\n";
    let out = postrider_sendmail(
        relay.config_path(),
        &["-t", "-i", "-fapp@sender.test"],
        message,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");

    let got = received(&world.mx1, 1).await;
    assert_eq!(got[0].mail_from, "app@sender.test");
    assert_eq!(got[0].rcpt_to, vec!["user@example.test"]);
    let data = String::from_utf8_lossy(&got[0].data);
    let headers = header_block(&data);
    assert!(headers.contains("\r\nSubject: php mail\r\n"), "{data}");
    assert!(headers.contains("\r\nDate: "), "Date: added:\n{data}");
    assert!(
        headers.contains("\r\nMessage-ID: <"),
        "Message-ID: added:\n{data}"
    );
    assert!(
        headers.contains("@relay.postrider.test>\r\n"),
        "Message-ID: of the relay's hostname:\n{data}"
    );
    assert!(
        headers.contains("\r\nFrom: <app@sender.test>\r\n"),
        "From: is the -f sender:\n{data}"
    );
    assert!(
        data.ends_with("\r\n\r\nHello from PHP.\r\n.\r\nstill the body\r\n"),
        "with -i a lone dot is content, LF became CRLF, nothing added:\n{data:?}"
    );
}

#[tokio::test]
async fn cron_style_invocation_through_a_symlink_named_sendmail() {
    let world = World::start().await;
    let relay = world.relay().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sendmail = dir.path().join("sendmail");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_postrider"), &sendmail).expect("symlink");
    // What cron runs for a job's output (MAILTO=ops@example.test).
    let message = "Subject: Cron <root@host> /usr/local/bin/nightly\nContent-Type: text/plain; charset=UTF-8\n\nnightly: 3 files rotated ✓\n";
    let out = run_with_input(
        &sendmail,
        &[
            "-FCronDaemon",
            "-i",
            "-B8BITMIME",
            "-oem",
            "ops@example.test",
        ],
        relay.config_path(),
        message.as_bytes(),
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");

    let got = received(&world.mx1, 1).await;
    assert!(
        got[0].mail_from.ends_with("@relay.postrider.test"),
        "the login name at the relay's hostname: {}",
        got[0].mail_from
    );
    assert_eq!(got[0].rcpt_to, vec!["ops@example.test"]);
    let data = String::from_utf8_lossy(&got[0].data);
    let expected_from = format!("\r\nFrom: \"CronDaemon\" <{}>\r\n", got[0].mail_from);
    assert!(
        header_block(&data).contains(&expected_from),
        "From: with the -F name:\n{data}"
    );
    assert!(
        data.ends_with("\r\n\r\nnightly: 3 files rotated ✓\r\n"),
        "8-bit body intact:\n{data:?}"
    );
}

#[tokio::test]
async fn bcc_recipients_get_the_message_without_the_bcc_header() {
    let world = World::start().await;
    let relay = world.relay().await;
    // No -i: the line with a single dot ends the message, the rest is not read.
    let message = b"From: Reports <app@sender.test>\r\nTo: Alice <alice@example.test>,\r\n  bob@example.test\r\nBcc: hidden@example.test,\r\n\tauditor@example.test\r\nSubject: report\r\n\r\nfigures\r\n.\r\nnot part of the message\r\n";
    let out = postrider_sendmail(relay.config_path(), &["-t"], message).await;
    assert_eq!(out.code, Some(0), "{out:?}");

    let got = received(&world.mx1, 1).await;
    let mut rcpts = got[0].rcpt_to.clone();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec![
            "alice@example.test",
            "auditor@example.test",
            "bob@example.test",
            "hidden@example.test"
        ]
    );
    let data = String::from_utf8_lossy(&got[0].data);
    assert!(!data.contains("Bcc"), "Bcc: removed:\n{data}");
    assert!(
        !data.contains("hidden@") && !data.contains("auditor@"),
        "{data}"
    );
    assert!(
        data.contains("\r\nFrom: Reports <app@sender.test>\r\nTo: Alice <alice@example.test>,\r\n  bob@example.test\r\nSubject: report\r\n"),
        "other headers unchanged, no From: added:\n{data}"
    );
    assert!(data.ends_with("\r\n\r\nfigures\r\n"), "{data:?}");
}

#[tokio::test]
async fn verbose_prints_the_queue_id_of_the_message_in_the_api() {
    let world = World::start().await;
    let relay = world.relay().await;
    let out = postrider_sendmail(
        relay.config_path(),
        &["-v", "-f", "app@sender.test", "user@example.test"],
        b"Subject: verbose\n\nhi\n",
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(">>> MAIL FROM:<app@sender.test>"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("<<< 250"), "{}", out.stdout);
    let id = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("queued as "))
        .expect("queue id printed")
        .to_owned();
    let (status, body) = relay.get_json(&format!("/v1/messages/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recipients"][0]["address"], "user@example.test");
    wait_until("delivered", async || {
        let (_, body) = relay.get_json(&format!("/v1/messages/{id}")).await;
        (body["state"] == "delivered").then_some(())
    })
    .await;
}

#[tokio::test]
async fn relay_down_is_a_temporary_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("postrider.toml");
    let port = free_port("127.0.0.1");
    std::fs::write(
        &config,
        format!("hostname = \"relay.postrider.test\"\n[smtp]\nlisten = [\"127.0.0.1:{port}\"]\n"),
    )
    .expect("write config");
    let out = postrider_sendmail(&config, &["user@example.test"], b"Subject: x\n\nx\n").await;
    assert_eq!(out.code, Some(75), "EX_TEMPFAIL: {out:?}");
    assert!(out.stderr.contains(&port.to_string()), "{}", out.stderr);
}

#[tokio::test]
async fn bad_invocations_and_messages_get_their_sysexits_status() {
    let world = World::start().await;
    let relay = world.relay().await;
    let config = relay.config_path();
    let message = b"Subject: nobody\n\nx\n";

    let out = postrider_sendmail(config, &["-t"], message).await;
    assert_eq!(out.code, Some(64), "-t without recipient headers: {out:?}");
    assert!(out.stderr.contains("no recipient"), "{}", out.stderr);
    let out = postrider_sendmail(config, &[], message).await;
    assert_eq!(out.code, Some(64), "no recipients at all: {out:?}");
    let out = postrider_sendmail(config, &["-Z", "user@example.test"], message).await;
    assert_eq!(out.code, Some(64), "unknown flag: {out:?}");
    let out = postrider_sendmail(config, &["-bs"], message).await;
    assert_eq!(out.code, Some(64), "-bs: {out:?}");
    assert!(out.stderr.contains("not supported"), "{}", out.stderr);
    let out = postrider_sendmail(config, &["-t"], b"\x00\x01garbage without headers\n").await;
    assert_eq!(out.code, Some(64), "garbage: {out:?}");
    let out = postrider_sendmail(config, &["not an address@@"], message).await;
    assert_eq!(out.code, Some(67), "malformed recipient: {out:?}");

    let big = format!("Subject: big\n\n{}\n", "x".repeat(3000));
    let small = TestRelay::start(&format!(
        "{}\n[smtp.limits]\nmax_message_size = \"2KiB\"\n",
        world.config(&["1s"], "1h")
    ))
    .await;
    let out = postrider_sendmail(small.config_path(), &["user@example.test"], big.as_bytes()).await;
    assert_eq!(out.code, Some(65), "EX_DATAERR: {out:?}");
    assert!(out.stderr.contains("too large"), "{}", out.stderr);
    assert!(world.mx1.messages().is_empty(), "nothing was sent");
}

/// A config whose submission address is `peer` (an SMTP sink standing in for the relay).
fn config_for_peer(dir: &Path, peer: std::net::SocketAddr) -> std::path::PathBuf {
    let config = dir.join("postrider.toml");
    std::fs::write(
        &config,
        format!("hostname = \"relay.postrider.test\"\n[smtp]\nlisten = [\"{peer}\"]\n"),
    )
    .expect("write config");
    config
}

#[tokio::test]
async fn refused_recipients_are_ex_nouser_and_a_4xx_recipient_sends_nothing() {
    let world = World::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // mx1 answers RCPT with 550 5.1.1 for bad*, 450 4.2.1 for later*, 250 for the rest.
    let peer = std::net::SocketAddr::new(crate::world::MX1.into(), world.smtp_port());
    let config = config_for_peer(dir.path(), peer);

    let out = postrider_sendmail(
        &config,
        &[
            "-f",
            "app@sender.test",
            "bad@example.test, user@example.test",
        ],
        b"Subject: partly refused\n\nx\n",
    )
    .await;
    assert_eq!(out.code, Some(67), "EX_NOUSER: {out:?}");
    assert!(
        out.stderr.contains("<bad@example.test>") && out.stderr.contains("550"),
        "the refused recipient with the reply: {}",
        out.stderr
    );
    let got = received(&world.mx1, 1).await;
    assert_eq!(
        got[0].rcpt_to,
        vec!["user@example.test"],
        "sent to the accepted one"
    );

    let out = postrider_sendmail(
        &config,
        &["user@example.test", "later@example.test"],
        b"Subject: partly deferred\n\nx\n",
    )
    .await;
    assert_eq!(out.code, Some(75), "EX_TEMPFAIL: {out:?}");
    assert!(out.stderr.contains("450"), "{}", out.stderr);
    let out = postrider_sendmail(
        &config,
        &["bad@example.test"],
        b"Subject: all refused\n\nx\n",
    )
    .await;
    assert_eq!(out.code, Some(67), "{out:?}");
    crate::world::stays_at(&world.mx1, 1, std::time::Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_relay_refusing_the_sender_is_ex_unavailable() {
    let world = World::start().await;
    // Loopback is not trusted here, so the relay wants AUTH before MAIL.
    let relay = TestRelay::start(&format!(
        "{}\n[smtp]\ntrusted_networks = [\"10.0.0.0/8\"]\n",
        world.config(&["1s"], "1h")
    ))
    .await;
    let out = postrider_sendmail(
        relay.config_path(),
        &["-f", "app@sender.test", "user@example.test"],
        b"Subject: refused\n\nx\n",
    )
    .await;
    assert_eq!(out.code, Some(69), "EX_UNAVAILABLE: {out:?}");
    assert!(
        out.stderr.contains("530"),
        "the reply is printed: {}",
        out.stderr
    );
}
