//! The Cluster side of a [`RedisBackplane`](super::RedisBackplane): which
//! nodes there are, which primary owns the channel's hash slot, and how to
//! reach a node with the seed URL's credentials.
//!
//! The redis crate's `ClusterClient` is not used here on purpose: it
//! resubscribes by itself behind our back after a reconnection, so a
//! subscription could not tell when messages may have been missed (the
//! [`Gap`](cache_core::BackplaneEvent::Gap) the contract needs), and it
//! routes `PUBLISH` to the owner of the channel's slot, while a global
//! `PUBLISH` may go to any live node. The topology is small (a slot and a
//! node list), so it is kept here, refreshed with `CLUSTER SLOTS`.

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion,
    RedisError, RedisResult, Value,
};

use super::{is_unreachable, no_node, timeout_error};
use crate::url::ServerUrl;

/// Hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// The hash slot of `key`, as Redis computes it: CRC16 (XMODEM) of the
/// key, or of its hash tag (the text between the first `{` and the next
/// `}`, when not empty), modulo 16384. Channels are hashed as keys are.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tag.unwrap_or(key)) % SLOTS
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), bit by bit:
/// a channel name is hashed once per (re)connection, no table needed.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A node's address, as the Cluster announces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct NodeAddr {
    host: String,
    port: u16,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The nodes of a Cluster and the owner of one channel's slot, as last
/// seen, with the settings to connect to any of them.
pub(crate) struct ClusterNodes {
    /// The first seed's settings (user, password, TLS, protocol): every
    /// node is reached with them, only the address changes.
    template: ConnectionInfo,
    seeds: Vec<NodeAddr>,
    /// The channel's hash slot.
    slot: u16,
    known: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    /// The primary that owns the channel's slot, once a node said so.
    owner: Option<NodeAddr>,
    /// Every node the last `CLUSTER SLOTS` named, primaries first.
    nodes: Vec<NodeAddr>,
    /// The node that answered the last `CLUSTER SLOTS`: asked first next
    /// time, since it was up.
    answered: Option<NodeAddr>,
}

impl fmt::Debug for ClusterNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known = self.known();
        f.debug_struct("ClusterNodes")
            .field("seeds", &self.seeds)
            .field("slot", &self.slot)
            .field("owner", &known.owner)
            .field("nodes", &known.nodes)
            .finish_non_exhaustive()
    }
}

impl ClusterNodes {
    /// The seeds, parsed; `Err` says which URL is not usable.
    pub(crate) fn new(urls: &[ServerUrl], channel: &str) -> Result<Self, String> {
        let mut template = None;
        let mut seeds = Vec::with_capacity(urls.len());
        for url in urls {
            let info = url
                .expose()
                .into_connection_info()
                .map_err(|err| format!("invalid Redis URL `{url}`: {err}"))?;
            let Some(addr) = node_addr(info.addr()) else {
                return Err(format!(
                    "`{url}` is not a TCP address; Cluster nodes are reached over TCP"
                ));
            };
            seeds.push(addr);
            template.get_or_insert(info);
        }
        let template = template.ok_or("a Cluster needs at least one node URL")?;
        Ok(ClusterNodes {
            template,
            seeds,
            slot: slot(channel.as_bytes()),
            known: Mutex::default(),
        })
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The primary owning the channel's slot, as last seen.
    pub(crate) fn owner(&self) -> Option<NodeAddr> {
        self.known().owner.clone()
    }

    /// Every node worth trying, the last one that answered first, then
    /// the others the Cluster named, then the seeds it did not name.
    pub(crate) fn nodes(&self) -> Vec<NodeAddr> {
        let known = self.known();
        let mut nodes: Vec<NodeAddr> = known.answered.iter().cloned().collect();
        for node in known.nodes.iter().chain(&self.seeds) {
            if !nodes.contains(node) {
                nodes.push(node.clone());
            }
        }
        nodes
    }

    /// A client for `node`, with the seed's credentials; RESP3 when
    /// `resp3` (sharded subscriptions take their messages as pushes).
    pub(crate) fn client(&self, node: &NodeAddr, resp3: bool) -> RedisResult<redis::Client> {
        let addr = match self.template.addr().clone() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: node.host.clone(),
                port: node.port,
                insecure,
                tls_params,
            },
            _ => ConnectionAddr::Tcp(node.host.clone(), node.port),
        };
        let mut info = self.template.clone().set_addr(addr);
        if resp3 {
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            info = info.set_redis_settings(settings);
        }
        redis::Client::open(info)
    }

    /// Asks the nodes, one after the other and each within `timeout`, for
    /// `CLUSTER SLOTS`, and keeps the first answer. `Err` is the last
    /// node's error when none answered (the previous view is kept).
    pub(crate) async fn refresh(&self, timeout: Duration) -> RedisResult<()> {
        let mut last = None;
        for node in self.nodes() {
            match tokio::time::timeout(timeout, self.ask_slots(&node)).await {
                Ok(Ok(ranges)) => {
                    self.learn(node, &ranges);
                    return Ok(());
                }
                Ok(Err(err)) => {
                    tracing::debug!(node = %node, "CLUSTER SLOTS failed: {err}");
                    // A node that is not in Cluster mode, or refuses our
                    // credentials, says the same on every node.
                    if !is_unreachable(&err) {
                        return Err(err);
                    }
                    last = Some(err);
                }
                Err(_) => {
                    tracing::debug!(node = %node, "CLUSTER SLOTS: no answer within {timeout:?}");
                    last = Some(timeout_error(&node, timeout));
                }
            }
        }
        Err(last.unwrap_or_else(no_node))
    }

    async fn ask_slots(&self, node: &NodeAddr) -> RedisResult<Vec<SlotRange>> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(None);
        let mut conn = self
            .client(node, false)?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await?;
        parse_slots(reply, node).ok_or_else(|| {
            RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected CLUSTER SLOTS reply",
                node.to_string(),
            ))
        })
    }

    fn learn(&self, answered: NodeAddr, ranges: &[SlotRange]) {
        let owner = ranges
            .iter()
            .find(|range| (range.start..=range.end).contains(&self.slot))
            .and_then(|range| range.nodes.first().cloned());
        let mut nodes: Vec<NodeAddr> = Vec::new();
        // Primaries first: any node relays a global message, but a
        // primary is where sharded traffic goes anyway.
        let primaries = ranges.iter().filter_map(|range| range.nodes.first());
        let replicas = ranges.iter().flat_map(|range| range.nodes.iter().skip(1));
        for node in primaries.chain(replicas) {
            if !nodes.contains(node) {
                nodes.push(node.clone());
            }
        }
        let mut known = self.known();
        if known.owner != owner {
            tracing::debug!(
                slot = self.slot,
                owner = ?owner.as_ref().map(NodeAddr::to_string),
                "the channel's slot has a new owner"
            );
        }
        known.owner = owner;
        known.nodes = nodes;
        known.answered = Some(answered);
    }
}

/// The host and port of a TCP address.
fn node_addr(addr: &ConnectionAddr) -> Option<NodeAddr> {
    match addr {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            Some(NodeAddr {
                host: host.clone(),
                port: *port,
            })
        }
        _ => None,
    }
}

/// One range of `CLUSTER SLOTS`: its primary first, then its replicas.
#[derive(Debug, PartialEq)]
struct SlotRange {
    start: u16,
    end: u16,
    nodes: Vec<NodeAddr>,
}

/// Parses `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], ...], ...]`.
/// An empty host means the node that answered (`asked`); `?` (an endpoint
/// the node does not know) is skipped.
fn parse_slots(reply: Value, asked: &NodeAddr) -> Option<Vec<SlotRange>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut parsed = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(items) = range else {
            return None;
        };
        let mut items = items.into_iter();
        let start = integer(items.next()?)?;
        let end = integer(items.next()?)?;
        let mut nodes = Vec::new();
        for node in items {
            let Value::Array(fields) = node else {
                return None;
            };
            let mut fields = fields.into_iter();
            let host = text(fields.next()?)?;
            let port = integer(fields.next()?)?;
            match host.as_str() {
                "?" => {}
                "" => nodes.push(NodeAddr {
                    host: asked.host.clone(),
                    port,
                }),
                _ => nodes.push(NodeAddr { host, port }),
            }
        }
        parsed.push(SlotRange { start, end, nodes });
    }
    Some(parsed)
}

fn integer(value: Value) -> Option<u16> {
    match value {
        Value::Int(n) => u16::try_from(n).ok(),
        _ => None,
    }
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        Value::Nil => Some("?".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` and the Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        for (key, expected) in [
            (&b"foo"[..], 12182),
            (b"bar", 5061),
            (b"cache:invalidation", slot(b"cache:invalidation")),
            (b"{user1000}.following", slot(b"user1000")),
            (b"foo{}{bar}", slot(b"foo{}{bar}")),
            (b"foo{{bar}}zap", slot(b"{bar")),
            (b"", 0),
        ] {
            assert_eq!(slot(key), expected, "{}", String::from_utf8_lossy(key));
        }
        assert_eq!(slot(b"{user1000}.followers"), slot(b"{user1000}.following"));
    }

    #[test]
    fn cluster_slots_replies_parse() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7003),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("", 7001),
                node("?", 7004),
            ]),
        ]);
        let asked = NodeAddr {
            host: "10.0.0.9".into(),
            port: 1,
        };
        let at = |host: &str, port| NodeAddr {
            host: host.into(),
            port,
        };
        assert_eq!(
            parse_slots(reply, &asked),
            Some(vec![
                SlotRange {
                    start: 0,
                    end: 5460,
                    nodes: vec![at("10.0.0.1", 7000), at("10.0.0.4", 7003)],
                },
                SlotRange {
                    start: 5461,
                    end: 16383,
                    nodes: vec![at("10.0.0.9", 7001)],
                },
            ])
        );
        assert_eq!(parse_slots(Value::Int(1), &asked), None);
    }

    #[test]
    fn the_owner_and_the_node_list_follow_the_last_answer() {
        let urls = [ServerUrl::new("redis://:pw@127.0.0.1:7000")];
        let nodes = ClusterNodes::new(&urls, "foo").unwrap();
        assert_eq!(nodes.slot, 12182);
        assert_eq!(nodes.owner(), None);
        let at = |port| NodeAddr {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(nodes.nodes(), [at(7000)]);
        let ranges = [
            SlotRange {
                start: 0,
                end: 8000,
                nodes: vec![at(7001), at(7004)],
            },
            SlotRange {
                start: 8001,
                end: 16383,
                nodes: vec![at(7002), at(7005)],
            },
        ];
        nodes.learn(at(7002), &ranges);
        assert_eq!(nodes.owner(), Some(at(7002)));
        assert_eq!(
            nodes.nodes(),
            [at(7002), at(7001), at(7004), at(7005), at(7000)]
        );
        // The seed's password goes to every node.
        let client = nodes.client(&at(7004), true).unwrap();
        let info = client.get_connection_info();
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert_eq!(info.redis_settings().protocol(), ProtocolVersion::RESP3);
        assert_eq!(node_addr(info.addr()), Some(at(7004)));
        assert!(ClusterNodes::new(&[ServerUrl::new("unix:///tmp/r.sock")], "c").is_err());
        assert!(ClusterNodes::new(&[], "c").is_err());
    }
}
