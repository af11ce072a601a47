//! Where to deliver a domain's mail: the resolver of [`postrider_dns`] (MX and address lookups
//! behind one shared, TTL-bound answer cache) and the pure rules of [`postrider_core::mx`],
//! re-exported here for the delivery engine and its callers.

pub use postrider_core::mx::{MxPlan, MxRecord, order_mx};
pub use postrider_dns::{
    BoxFuture, DnsSettings, HickoryMxResolver, MAX_TXT_RECORDS, MxError, MxHost, MxResolver,
    ResolverBuildError,
};
