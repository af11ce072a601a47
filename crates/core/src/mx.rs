//! Where a domain's mail goes, as far as DNS data decides it: RFC 5321 §5.1 (MX ordering, the
//! implicit MX) and RFC 7505 (null MX). Pure: the records and the random source are arguments, so
//! delivery, address verification and `check-domain` apply the very same rules.

use rand::Rng;
use rand::seq::SliceRandom;

use crate::Domain;

/// One MX record as found in DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    /// MX preference.
    pub preference: u16,
    /// The exchange name without trailing dot; empty for the root (`.`).
    pub exchange: String,
}

impl MxRecord {
    /// A record of `exchange` (a trailing dot is dropped; `.` becomes the root).
    pub fn new(preference: u16, exchange: &str) -> Self {
        MxRecord {
            preference,
            exchange: exchange.trim_end_matches('.').to_owned(),
        }
    }
}

/// What the MX records of a domain say, after RFC 5321 §5.1 and RFC 7505 rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPlan {
    /// The domain has a null MX.
    NullMx,
    /// Try these exchange names in this order.
    Hosts(Vec<MxRecord>),
}

/// The hosts to try for `domain` given its MX records: an empty list (NODATA) makes the domain
/// itself the implicit MX with preference 0 (RFC 5321 §5.1); otherwise [`order_mx`].
pub fn plan_mx<R: Rng + ?Sized>(
    domain: &Domain,
    records: Vec<MxRecord>,
    limit: usize,
    rng: &mut R,
) -> MxPlan {
    if records.is_empty() {
        return MxPlan::Hosts(vec![MxRecord::new(0, domain.as_str())]);
    }
    order_mx(records, limit, rng)
}

/// Orders MX records: ascending preference, equal preferences in random order (RFC 5321 §5.1),
/// duplicates removed, at most `limit` kept.
///
/// A lone root exchange (`0 .`) is a null MX. A root exchange next to real ones violates
/// RFC 7505 §3; the root entry is then ignored and the real hosts are used.
pub fn order_mx<R: Rng + ?Sized>(mut records: Vec<MxRecord>, limit: usize, rng: &mut R) -> MxPlan {
    if is_null_mx(&records) {
        return MxPlan::NullMx;
    }
    records.retain(|r| !r.exchange.is_empty());
    for r in &mut records {
        r.exchange.make_ascii_lowercase();
    }
    records.sort_by(|a, b| {
        a.preference
            .cmp(&b.preference)
            .then_with(|| a.exchange.cmp(&b.exchange))
    });
    records.dedup_by(|a, b| a.exchange == b.exchange);
    shuffle_equal_preference(&mut records, |r| r.preference, rng);
    records.truncate(limit);
    MxPlan::Hosts(records)
}

/// Whether `records` say the domain accepts no mail (RFC 7505): there are records and all of
/// them name the root. A root next to real exchanges is a publishing error, not a null MX.
pub fn is_null_mx(records: &[MxRecord]) -> bool {
    !records.is_empty() && records.iter().all(|r| r.exchange.is_empty())
}

/// Shuffles each run of equal preference in `items` (already sorted by preference), leaving the
/// runs in place: RFC 5321 §5.1 spreads load over equally preferred hosts. A cached MX answer is
/// reshuffled this way on every use.
pub fn shuffle_equal_preference<T, R: Rng + ?Sized>(
    items: &mut [T],
    preference: impl Fn(&T) -> u16,
    rng: &mut R,
) {
    let mut start = 0;
    while start < items.len() {
        let pref = preference(&items[start]);
        let end = items[start..]
            .iter()
            .position(|r| preference(r) != pref)
            .map_or(items.len(), |n| start + n);
        items[start..end].shuffle(rng);
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn rec(preference: u16, exchange: &str) -> MxRecord {
        MxRecord::new(preference, exchange)
    }

    fn names(plan: &MxPlan) -> Vec<String> {
        match plan {
            MxPlan::Hosts(h) => h
                .iter()
                .map(|r| format!("{}:{}", r.preference, r.exchange))
                .collect(),
            MxPlan::NullMx => vec!["null".into()],
        }
    }

    #[test]
    fn sorts_by_preference() {
        let mut rng = StdRng::seed_from_u64(1);
        let plan = order_mx(
            vec![
                rec(20, "b.example"),
                rec(10, "A.example."),
                rec(30, "c.example"),
            ],
            5,
            &mut rng,
        );
        assert_eq!(
            names(&plan),
            vec!["10:a.example", "20:b.example", "30:c.example"]
        );
    }

    #[test]
    fn shuffles_only_within_equal_preference() {
        let input = vec![
            rec(10, "a1"),
            rec(10, "a2"),
            rec(10, "a3"),
            rec(5, "first"),
            rec(20, "last"),
        ];
        let mut seen_orders = std::collections::HashSet::new();
        for seed in 0..64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let got = names(&order_mx(input.clone(), 10, &mut rng));
            assert_eq!(got.first().map(String::as_str), Some("5:first"));
            assert_eq!(got.last().map(String::as_str), Some("20:last"));
            let mut middle = got[1..4].to_vec();
            seen_orders.insert(middle.clone());
            middle.sort();
            assert_eq!(middle, vec!["10:a1", "10:a2", "10:a3"]);
        }
        // the equal-preference group really is shuffled (all 6 permutations occur in 64 seeds)
        assert_eq!(seen_orders.len(), 6);
        // and the same seed gives the same order
        let a = order_mx(input.clone(), 10, &mut StdRng::seed_from_u64(7));
        let b = order_mx(input, 10, &mut StdRng::seed_from_u64(7));
        assert_eq!(a, b);
    }

    #[test]
    fn null_mx_and_limits() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(order_mx(vec![rec(0, ".")], 5, &mut rng), MxPlan::NullMx);
        assert_eq!(order_mx(vec![rec(0, "")], 5, &mut rng), MxPlan::NullMx);
        // a root entry next to real hosts is ignored
        assert_eq!(
            names(&order_mx(vec![rec(0, ""), rec(10, "mx")], 5, &mut rng)),
            vec!["10:mx"]
        );
        // duplicates removed, limit applied
        let plan = order_mx(
            vec![rec(10, "a"), rec(10, "a"), rec(20, "b"), rec(30, "c")],
            2,
            &mut rng,
        );
        assert_eq!(names(&plan), vec!["10:a", "20:b"]);
    }

    #[test]
    fn no_records_make_the_domain_its_own_mx() {
        let mut rng = StdRng::seed_from_u64(1);
        let d = Domain::parse("Example.ORG").unwrap();
        assert_eq!(
            names(&plan_mx(&d, vec![], 5, &mut rng)),
            vec![format!("0:{}", d.as_str())]
        );
        assert_eq!(plan_mx(&d, vec![rec(0, ".")], 5, &mut rng), MxPlan::NullMx);
    }

    #[test]
    fn reshuffling_keeps_preference_runs() {
        let mut items = vec![(1u16, 'a'), (1, 'b'), (2, 'c'), (3, 'd'), (3, 'e')];
        let mut seen = std::collections::HashSet::new();
        for seed in 0..32 {
            shuffle_equal_preference(&mut items, |i| i.0, &mut StdRng::seed_from_u64(seed));
            assert_eq!(
                items.iter().map(|i| i.0).collect::<Vec<_>>(),
                [1, 1, 2, 3, 3]
            );
            seen.insert(items.iter().map(|i| i.1).collect::<String>());
        }
        assert_eq!(seen.len(), 4);
    }
}
