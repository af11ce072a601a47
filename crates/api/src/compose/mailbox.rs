//! Mailboxes as the API accepts them: `"a@b.c"`, `"Name <a@b.c>"`, `{"email", "name"}`, or a
//! list of those.

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A mailbox given as `"a@b.c"`, `"Name <a@b.c>"` or `{"email": "a@b.c", "name": "Name"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MailboxInput {
    pub(super) email: String,
    pub(super) name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxObject {
    email: String,
    #[serde(default)]
    name: Option<String>,
}

impl MailboxInput {
    fn from_text(s: &str) -> MailboxInput {
        let t = s.trim();
        if let (Some(lt), true) = (t.rfind('<'), t.ends_with('>')) {
            let name = t[..lt].trim().trim_matches('"').trim();
            return MailboxInput {
                email: t[lt + 1..t.len() - 1].trim().to_owned(),
                name: (!name.is_empty()).then(|| name.to_owned()),
            };
        }
        MailboxInput {
            email: t.to_owned(),
            name: None,
        }
    }
}

struct MailboxVisitor;

impl<'de> Visitor<'de> for MailboxVisitor {
    type Value = MailboxInput;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an address string or an object {\"email\", \"name\"}")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<MailboxInput, E> {
        Ok(MailboxInput::from_text(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MailboxInput, A::Error> {
        let o = MailboxObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(MailboxInput {
            email: o.email,
            name: o.name,
        })
    }
}

impl<'de> Deserialize<'de> for MailboxInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MailboxVisitor)
    }
}

/// One mailbox or a list of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MailboxList(pub(super) Vec<MailboxInput>);

struct MailboxListVisitor;

impl<'de> Visitor<'de> for MailboxListVisitor {
    type Value = MailboxList;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an address, an address object, or a list of them")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<MailboxList, E> {
        Ok(MailboxList(vec![MailboxInput::from_text(v)]))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MailboxList, A::Error> {
        Ok(MailboxList(vec![MailboxVisitor.visit_map(map)?]))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MailboxList, A::Error> {
        let mut out = Vec::new();
        while let Some(m) = seq.next_element::<MailboxInput>()? {
            out.push(m);
        }
        Ok(MailboxList(out))
    }
    fn visit_unit<E: de::Error>(self) -> Result<MailboxList, E> {
        Ok(MailboxList::default())
    }
}

impl<'de> Deserialize<'de> for MailboxList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MailboxListVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_text_forms() {
        assert_eq!(
            MailboxInput::from_text(" a@b.c "),
            MailboxInput {
                email: "a@b.c".into(),
                name: None
            }
        );
        assert_eq!(
            MailboxInput::from_text("\"Ann Lee\" <ann@b.c>"),
            MailboxInput {
                email: "ann@b.c".into(),
                name: Some("Ann Lee".into())
            }
        );
        assert_eq!(
            MailboxInput::from_text("<ann@b.c>"),
            MailboxInput {
                email: "ann@b.c".into(),
                name: None
            }
        );
    }

    #[test]
    fn mailbox_list_accepts_one_or_many() {
        let one: MailboxList = serde_json::from_str("\"a@b.c\"").unwrap();
        assert_eq!(one.0.len(), 1);
        let obj: MailboxList = serde_json::from_str(r#"{"email":"a@b.c","name":"A"}"#).unwrap();
        assert_eq!(obj.0[0].name.as_deref(), Some("A"));
        let many: MailboxList = serde_json::from_str(r#"["a@b.c", {"email":"d@e.f"}]"#).unwrap();
        assert_eq!(many.0.len(), 2);
        assert!(serde_json::from_str::<MailboxList>("5").is_err());
        assert!(serde_json::from_str::<MailboxList>(r#"{"email":"a@b.c","nmae":"typo"}"#).is_err());
    }
}
