//! An authoritative DNS server on loopback (hickory-server) with failure
//! injection per query name.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

use crate::DnsError;

/// TTL of every record the kit serves (seconds).
const RECORD_TTL: u32 = 60;
/// How long a "never answer" query is held before it is silently dropped.
const NO_ANSWER_HOLD: Duration = Duration::from_secs(60);
/// Idle timeout of DNS-over-TCP connections.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most queries kept in the query log (the oldest are dropped).
const MAX_QUERY_LOG: usize = 10_000;

/// A failure the server injects for a query name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// Answer `SERVFAIL`.
    ServFail,
    /// Answer `REFUSED`.
    Refused,
    /// Never answer (the client times out).
    NoAnswer,
}

/// One record of a [`Zone`], kept as text until the server starts.
#[derive(Clone, Debug)]
enum ZoneRecord {
    Mx {
        name: String,
        preference: u16,
        exchange: String,
    },
    A {
        name: String,
        address: Ipv4Addr,
    },
    Aaaa {
        name: String,
        address: Ipv6Addr,
    },
    Txt {
        name: String,
        text: String,
    },
    Cname {
        name: String,
        target: String,
    },
}

/// A zone to serve, built with chained calls:
/// `Zone::new("test.").mx("example.test", 10, "mx1.example.test").a("mx1.example.test", ip)`.
///
/// Names may be given with or without the trailing dot; all are absolute
/// and must lie under the origin. The server adds the SOA and NS records.
/// A name under the origin with no records is NXDOMAIN (with the SOA); a
/// name that has other types but not the queried one is NODATA.
#[derive(Clone, Debug)]
pub struct Zone {
    origin: String,
    records: Vec<ZoneRecord>,
}

impl Zone {
    /// An empty zone for `origin` (e.g. `"test."`).
    pub fn new(origin: &str) -> Self {
        Self {
            origin: origin.to_owned(),
            records: Vec::new(),
        }
    }

    /// The zone origin as given.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Adds `name MX preference exchange`.
    pub fn mx(mut self, name: &str, preference: u16, exchange: &str) -> Self {
        self.records.push(ZoneRecord::Mx {
            name: name.to_owned(),
            preference,
            exchange: exchange.to_owned(),
        });
        self
    }

    /// Adds the RFC 7505 null MX `name MX 0 .` ("accepts no mail").
    pub fn null_mx(self, name: &str) -> Self {
        self.mx(name, 0, ".")
    }

    /// Adds `name A address`.
    pub fn a(mut self, name: &str, address: Ipv4Addr) -> Self {
        self.records.push(ZoneRecord::A {
            name: name.to_owned(),
            address,
        });
        self
    }

    /// Adds `name AAAA address`.
    pub fn aaaa(mut self, name: &str, address: Ipv6Addr) -> Self {
        self.records.push(ZoneRecord::Aaaa {
            name: name.to_owned(),
            address,
        });
        self
    }

    /// Adds `name TXT "text"` (split into 255-byte strings as needed).
    pub fn txt(mut self, name: &str, text: &str) -> Self {
        self.records.push(ZoneRecord::Txt {
            name: name.to_owned(),
            text: text.to_owned(),
        });
        self
    }

    /// Adds `name CNAME target`.
    pub fn cname(mut self, name: &str, target: &str) -> Self {
        self.records.push(ZoneRecord::Cname {
            name: name.to_owned(),
            target: target.to_owned(),
        });
        self
    }

    fn origin_name(&self) -> Result<Name, DnsError> {
        parse_name(&self.origin)
    }

    /// Converts the records, checking that they lie under the origin.
    fn to_records(&self) -> Result<Vec<Record>, DnsError> {
        let origin = self.origin_name()?;
        let mut out = Vec::with_capacity(self.records.len());
        for record in &self.records {
            let (name, rdata) = match record {
                ZoneRecord::Mx {
                    name,
                    preference,
                    exchange,
                } => (name, RData::MX(MX::new(*preference, parse_name(exchange)?))),
                ZoneRecord::A { name, address } => (name, RData::A(A(*address))),
                ZoneRecord::Aaaa { name, address } => (name, RData::AAAA(AAAA(*address))),
                ZoneRecord::Txt { name, text } => (name, RData::TXT(TXT::new(split_txt(text)))),
                ZoneRecord::Cname { name, target } => {
                    (name, RData::CNAME(CNAME(parse_name(target)?)))
                }
            };
            let owner = parse_name(name)?;
            if !origin.zone_of(&owner) {
                return Err(DnsError::OutsideZone {
                    name: name.clone(),
                    zone: self.origin.clone(),
                });
            }
            out.push(Record::from_rdata(owner, RECORD_TTL, rdata));
        }
        Ok(out)
    }

    /// The SOA and NS records the server adds to every zone.
    fn apex_records(&self) -> Result<Vec<Record>, DnsError> {
        let origin = self.origin_name()?;
        let ns = parse_name("ns").and_then(|n| {
            n.append_domain(&origin)
                .map_err(|e| DnsError::InvalidName(e.to_string()))
        })?;
        let hostmaster = parse_name("hostmaster").and_then(|n| {
            n.append_domain(&origin)
                .map_err(|e| DnsError::InvalidName(e.to_string()))
        })?;
        let soa = SOA::new(ns.clone(), hostmaster, 1, 3600, 600, 86_400, RECORD_TTL);
        Ok(vec![
            Record::from_rdata(origin.clone(), RECORD_TTL, RData::SOA(soa)),
            Record::from_rdata(origin, RECORD_TTL, RData::NS(NS(ns))),
        ])
    }
}

fn split_txt(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if current.len() + ch.len_utf8() > 255 {
            parts.push(std::mem::take(&mut current));
        }
        current.push(ch);
    }
    parts.push(current);
    parts
}

/// Parses an absolute name; a missing trailing dot is added.
fn parse_name(text: &str) -> Result<Name, DnsError> {
    if text == "." {
        return Ok(Name::root());
    }
    let absolute = if text.ends_with('.') {
        text.to_owned()
    } else {
        format!("{text}.")
    };
    Name::from_utf8(&absolute).map_err(|e| DnsError::InvalidName(format!("{text}: {e}")))
}

/// One query the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsQuery {
    /// Query name, lower case, with the trailing dot.
    pub name: String,
    /// Query type.
    pub record_type: RecordType,
}

/// Failure table and query log, shared with the request handler.
#[derive(Debug, Default)]
struct DnsState {
    /// Keyed by name and type; `None` = every type.
    failures: Mutex<HashMap<(LowerName, Option<RecordType>), Failure>>,
    queries: Mutex<Vec<DnsQuery>>,
    query_count: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Catalog wrapper that answers injected failures before the zones.
struct FaultInjectingCatalog {
    catalog: Catalog,
    state: Arc<DnsState>,
}

impl FaultInjectingCatalog {
    fn failure_for(&self, name: &LowerName, record_type: RecordType) -> Option<Failure> {
        let failures = lock(&self.state.failures);
        failures
            .get(&(name.clone(), Some(record_type)))
            .or_else(|| failures.get(&(name.clone(), None)))
            .copied()
    }
}

fn response_info(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for FaultInjectingCatalog {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        if let Some(query) = request.queries.queries().first() {
            let name = query.name().clone();
            let record_type = query.query_type();
            self.state.query_count.fetch_add(1, Ordering::SeqCst);
            {
                let mut log = lock(&self.state.queries);
                if log.len() >= MAX_QUERY_LOG {
                    log.remove(0);
                }
                log.push(DnsQuery {
                    name: name.to_string(),
                    record_type,
                });
            }
            let failure = self.failure_for(&name, record_type);
            tracing::debug!(%name, %record_type, ?failure, "dns query");
            match failure {
                Some(Failure::NoAnswer) => {
                    tokio::time::sleep(NO_ANSWER_HOLD).await;
                    return response_info(request, ResponseCode::ServFail);
                }
                Some(failure) => {
                    let code = if failure == Failure::Refused {
                        ResponseCode::Refused
                    } else {
                        ResponseCode::ServFail
                    };
                    let response = MessageResponseBuilder::new(&request.queries, None)
                        .error_msg(&request.metadata, code);
                    return match response_handle.send_response(response).await {
                        Ok(info) => info,
                        Err(error) => {
                            tracing::warn!(%error, "dns failure response not sent");
                            response_info(request, ResponseCode::ServFail)
                        }
                    };
                }
                None => {}
            }
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// A real authoritative DNS server on `127.0.0.1` (UDP and TCP, same port).
///
/// Stops on drop or [`Self::shutdown`].
pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<DnsState>,
    zones: Vec<(Name, Arc<InMemoryZoneHandler>)>,
    server: Option<Server<FaultInjectingCatalog>>,
    serial: AtomicU64,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .field(
                "zones",
                &self
                    .zones
                    .iter()
                    .map(|(n, _)| n.to_string())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl DnsServer {
    /// Serves `zones` on `127.0.0.1` with an ephemeral port.
    pub async fn start(zones: impl IntoIterator<Item = Zone>) -> Result<Self, DnsError> {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), zones).await
    }

    /// Serves `zones` on `ip` with an ephemeral port (UDP and TCP share it).
    pub async fn start_on(
        ip: IpAddr,
        zones: impl IntoIterator<Item = Zone>,
    ) -> Result<Self, DnsError> {
        let mut catalog = Catalog::new();
        let mut handlers = Vec::new();
        for zone in zones {
            let origin = zone.origin_name()?;
            let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
                origin.clone(),
                ZoneType::Primary,
                AxfrPolicy::Deny,
            );
            for record in zone.apex_records()?.into_iter().chain(zone.to_records()?) {
                handler.upsert_mut(record, 1);
            }
            let handler = Arc::new(handler);
            catalog.upsert(LowerName::new(&origin), vec![handler.clone()]);
            handlers.push((origin, handler));
        }
        let (udp, tcp) = bind_pair(ip).await?;
        let addr = udp.local_addr().map_err(DnsError::Bind)?;
        let state = Arc::new(DnsState::default());
        let mut server = Server::new(FaultInjectingCatalog {
            catalog,
            state: state.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, 32);
        tracing::debug!(%addr, zones = handlers.len(), "dns server listening");
        Ok(Self {
            addr,
            state,
            zones: handlers,
            server: Some(server),
            serial: AtomicU64::new(1),
        })
    }

    /// The address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port (UDP and TCP).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Injects `failure` for every query of `name` (exact name, any type).
    pub fn set_failure(&self, name: &str, failure: Failure) -> Result<(), DnsError> {
        let name = LowerName::new(&parse_name(name)?);
        lock(&self.state.failures).insert((name, None), failure);
        Ok(())
    }

    /// Injects `failure` for queries of `name` with type `record_type` only.
    pub fn set_failure_for(
        &self,
        name: &str,
        record_type: RecordType,
        failure: Failure,
    ) -> Result<(), DnsError> {
        let name = LowerName::new(&parse_name(name)?);
        lock(&self.state.failures).insert((name, Some(record_type)), failure);
        Ok(())
    }

    /// Removes every injected failure of `name` (all types).
    pub fn clear_failure(&self, name: &str) -> Result<(), DnsError> {
        let name = LowerName::new(&parse_name(name)?);
        lock(&self.state.failures).retain(|(n, _), _| *n != name);
        Ok(())
    }

    /// Removes every injected failure.
    pub fn clear_failures(&self) {
        lock(&self.state.failures).clear();
    }

    /// Adds the records of `zone` to the served zone with the same origin
    /// (which must have been given at start). Existing records stay.
    pub async fn add_records(&self, zone: Zone) -> Result<(), DnsError> {
        let handler = self.handler(&zone)?;
        let serial = self.next_serial();
        for record in zone.to_records()? {
            handler.upsert(record, serial).await;
        }
        Ok(())
    }

    /// Removes the records of type `record_type` at `name`.
    pub async fn remove_records(
        &self,
        name: &str,
        record_type: RecordType,
    ) -> Result<(), DnsError> {
        let owner = parse_name(name)?;
        let Some((_, handler)) = self.zones.iter().find(|(origin, _)| origin.zone_of(&owner))
        else {
            return Err(DnsError::OutsideZone {
                name: name.to_owned(),
                zone: "any served zone".to_owned(),
            });
        };
        let key = RrKey::new(LowerName::new(&owner), record_type);
        handler.records_mut().await.remove(&key);
        Ok(())
    }

    fn handler(&self, zone: &Zone) -> Result<&Arc<InMemoryZoneHandler>, DnsError> {
        let origin = zone.origin_name()?;
        self.zones
            .iter()
            .find(|(served, _)| *served == origin)
            .map(|(_, handler)| handler)
            .ok_or_else(|| DnsError::UnknownZone(zone.origin.clone()))
    }

    fn next_serial(&self) -> u32 {
        let serial = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
        u32::try_from(serial).unwrap_or(u32::MAX)
    }

    /// Queries received so far (bounded log, oldest first).
    pub fn queries(&self) -> Vec<DnsQuery> {
        lock(&self.state.queries).clone()
    }

    /// Number of queries received so far.
    pub fn query_count(&self) -> u64 {
        self.state.query_count.load(Ordering::SeqCst)
    }

    /// Resolver configuration pointing at this server only (UDP then TCP,
    /// negative answers trusted).
    pub fn resolver_config(&self) -> ResolverConfig {
        let mut udp = ConnectionConfig::udp();
        udp.port = self.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = self.port();
        let name_server = NameServerConfig::new(self.addr.ip(), true, vec![udp, tcp]);
        ResolverConfig::from_parts(None, vec![], vec![name_server])
    }

    /// A resolver for this server: no cache, one attempt, `timeout` per
    /// try (a "never answer" name fails after about twice that: UDP, TCP).
    pub fn resolver(&self, timeout: Duration) -> Result<TokioResolver, DnsError> {
        let mut options = ResolverOpts::default();
        options.timeout = timeout;
        options.attempts = 1;
        options.cache_size = 0;
        TokioResolver::builder_with_config(self.resolver_config(), TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|e| DnsError::Resolver(e.to_string()))
    }

    /// Stops serving and waits (briefly) for the server tasks to end.
    pub async fn shutdown(mut self) {
        if let Some(mut server) = self.server.take() {
            server.shutdown_token().cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), server.block_until_done()).await;
        }
    }
}

/// Binds UDP on an ephemeral port, then TCP on the same port (retrying
/// when that TCP port happens to be taken).
async fn bind_pair(ip: IpAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let mut last_error = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .map_err(DnsError::Bind)?;
        let port = udp.local_addr().map_err(DnsError::Bind)?.port();
        match TcpListener::bind(SocketAddr::new(ip, port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) => last_error = Some(error),
        }
    }
    Err(DnsError::Bind(last_error.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::AddrInUse, "no free UDP+TCP port pair")
    })))
}
