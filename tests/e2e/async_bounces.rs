//! What happens after the 250: with `[bounces] domain`, every recipient of a message gets its
//! own transaction from a signed return path in the bounce domain, while the relay's own
//! failure notices still go to the original sender from the null reverse-path.

use crate::harness::TestRelay;
use crate::smtp_client::{message, submit};
use crate::world::{World, received};

/// The `[bounces]` section of the relay under test.
const BOUNCES: &str =
    "\n[bounces]\ndomain = \"bounces.postrider.test\"\nsecret = \"verp-secret-for-the-tests\"\n";

#[tokio::test]
async fn each_recipient_gets_its_own_signed_return_path() {
    let world = World::start().await;
    let relay = TestRelay::start(&format!("{}{BOUNCES}", world.config(&["1s"], "1h"))).await;
    let data = message("app@sender.test", "one@example.test", "verp");
    let id = submit(
        relay.smtp,
        "app@sender.test",
        &["one@example.test", "two@example.test", "bad@example.test"],
        &data,
    )
    .await;

    let got = received(&world.mx1, 2).await;
    assert_eq!(got.len(), 2, "one transaction per accepted recipient");
    let mut return_paths = Vec::new();
    for m in &got {
        assert_eq!(m.rcpt_to.len(), 1, "{:?}", m.rcpt_to);
        let (local, domain) = m.mail_from.rsplit_once('@').unwrap();
        assert_eq!(domain, "bounces.postrider.test", "{}", m.mail_from);
        let token = local.strip_prefix("b+").unwrap();
        assert_eq!(token.len(), 24, "{}", m.mail_from);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
            "{token}"
        );
        let text = String::from_utf8_lossy(&m.data);
        assert!(
            text.contains("From: <app@sender.test>"),
            "From is untouched:\n{text}"
        );
        return_paths.push(m.mail_from.clone());
    }
    return_paths.dedup();
    assert_eq!(
        return_paths.len(),
        2,
        "distinct per recipient: {return_paths:?}"
    );

    // The relay's own notice for the refused recipient goes to the real sender, from <>.
    let dsn = received(&world.sender_mx, 1).await;
    assert_eq!(dsn[0].mail_from, "");
    assert_eq!(dsn[0].rcpt_to, vec!["app@sender.test"]);
    // ... and that notice itself, sent with the null reverse-path, gets no return path.
    let (_, body) = relay.get_json(&format!("/v1/messages/{id}")).await;
    assert_eq!(body["state"], "partially_bounced", "{body}");
}
