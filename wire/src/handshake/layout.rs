//! The handshake records, byte by byte.
//!
//! Both the [`Hello`] and the [`HelloReply`] are *records*: an 8-byte header that every
//! protocol version keeps, then a body. All integers are big-endian.
//!
//! ```text
//! header (all versions)
//!   0   4  magic        "KVSW" (MAGIC)
//!   4   2  version      u16: the sender's protocol version
//!   6   2  body_len     u16: number of body bytes that follow
//! hello body, versions 2 to 4 (version 1 ended after cluster_id)
//!   8   1  role         0 = client, 1 = replica
//!   9   8  node_id      u64: the replica's id; 0 for a client
//!  17   1  cluster_len  u8: 1..=64
//!  18   n  cluster_id   UTF-8
//!   then   identity     u8: 0 = none (clients), 1 = a replica identity follows:
//!            cluster_uid   16 bytes
//!            instance      16 bytes
//!            member_count  u8: 1..=IDENTITY_MEMBERS_MAX
//!            members       u64 each, strictly ascending
//!            sessions_max  u64
//!            configuration u64 (version 4): the latest configuration id it knows
//!            addr_len      u8 (version 4): 0..=PEER_ADDR_BYTES_MAX
//!            peer_addr     UTF-8 (version 4): where it accepts peer connections
//!                         2 = a joining replica's identity follows (version 3):
//!            instance      16 bytes
//!            sessions_max  u64
//! reply body (its layout is frozen: any version can read any peer's reply)
//!   8   1  outcome      0 = accepted, 1 = refused
//!   accepted:  node_id u64, version u16, and when version >= 3:
//!              cluster u8: 0 = none, 1 = follows: cluster_uid 16 bytes, members ids,
//!              voters ids
//!   refused:   code u8, message text, then the fields of the code:
//!     1 bad magic            got: u8 length (<= 4), bytes
//!     2 unsupported version  got u16, min u16, max u16
//!     3 cluster mismatch     expected text, got text
//!     4 unknown node         node_id u64
//!     5 unexpected role      role u8, node_id u64 (as in the hello)
//!     6 malformed            reason text
//!     7 membership mismatch  expected ids, got ids (each: u8 count, u64 each)
//!     8 sessions-max mismatch expected u64, got u64
//!     9 cluster uid mismatch expected 16 bytes, got 16 bytes
//!    10 member replaced      node_id u64, known 16 bytes, got 16 bytes
//!    11 missing identity     node_id u64
//!    12 removed              node_id u64, configuration u64 (version 4)
//!    13 TLS required         (no fields)
//!    14 certificate mismatch claimed u64, certified u64
//!    15 certificate names no member  claimed u64, reason text
//! text = u16 length, then UTF-8 (at most 512 bytes; longer text is cut when encoding)
//! ```
//!
//! A reader checks the magic first, then the version, and only then parses the body, so
//! a future version may change the hello body and still be refused with the supported
//! range. The `message` of a refusal is its human text, so a peer that does not know a
//! newer refusal code can still print why it was refused ([`HandshakeRefusal::Other`]).
//! Decoding is a pure function that never panics.

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    Accepted, ClusterInfo, HandshakeRefusal, Hello, HelloReply, PeerRole, ReplicaIdentity, Uid,
    CLUSTER_ID_BYTES_MAX, IDENTITY_MEMBERS_MAX, MAGIC, PEER_ADDR_BYTES_MAX, PROTOCOL_VERSION,
    PROTOCOL_VERSION_MIN,
};
use crate::WireError;

/// Length of the record header (magic, version, body length), in bytes.
pub const RECORD_HEADER_BYTES: usize = 8;

/// Longest text field in a reply, in bytes; longer text is cut at a character boundary.
pub const REPLY_TEXT_BYTES_MAX: usize = 512;

const ROLE_CLIENT: u8 = 0;
const ROLE_REPLICA: u8 = 1;
const OUTCOME_ACCEPTED: u8 = 0;
const OUTCOME_REFUSED: u8 = 1;
const CODE_BAD_MAGIC: u8 = 1;
const CODE_UNSUPPORTED_VERSION: u8 = 2;
const CODE_CLUSTER_MISMATCH: u8 = 3;
const CODE_UNKNOWN_NODE: u8 = 4;
const CODE_UNEXPECTED_ROLE: u8 = 5;
const CODE_MALFORMED: u8 = 6;
const CODE_MEMBERSHIP_MISMATCH: u8 = 7;
const CODE_SESSIONS_MAX_MISMATCH: u8 = 8;
const CODE_CLUSTER_UID_MISMATCH: u8 = 9;
const CODE_MEMBER_REPLACED: u8 = 10;
const CODE_MISSING_IDENTITY: u8 = 11;
const CODE_REMOVED: u8 = 12;
const CODE_TLS_REQUIRED: u8 = 13;
const CODE_CERTIFICATE_MISMATCH: u8 = 14;
const CODE_CERTIFICATE_NAMES_NO_MEMBER: u8 = 15;
const IDENTITY_NONE: u8 = 0;
const IDENTITY_PRESENT: u8 = 1;
const IDENTITY_JOINING: u8 = 2;
const CLUSTER_NONE: u8 = 0;
const CLUSTER_PRESENT: u8 = 1;

impl Hello {
    /// Encodes this hello as a record (header and body).
    ///
    /// The magic and version are written as they are, so a test can send a bad one; the
    /// cluster id must be 1 to [`CLUSTER_ID_BYTES_MAX`] bytes long, and an identity must
    /// list 1 to [`IDENTITY_MEMBERS_MAX`] members in ascending order.
    pub fn encode(&self) -> Result<Bytes, WireError> {
        let id = self.cluster_id.as_bytes();
        if id.is_empty() || id.len() > CLUSTER_ID_BYTES_MAX {
            return Err(WireError::InvalidHello {
                reason: format!(
                    "cluster id is {} bytes long; it must be 1 to {CLUSTER_ID_BYTES_MAX} bytes",
                    id.len()
                ),
            });
        }
        let mut body = BytesMut::with_capacity(1 + 8 + 1 + id.len() + 1);
        put_role(&mut body, self.role);
        body.put_u8(id.len() as u8);
        body.put_slice(id);
        match &self.identity {
            None => body.put_u8(IDENTITY_NONE),
            Some(identity) if identity.joining => {
                if self.version < 3 {
                    return Err(WireError::InvalidHello {
                        reason: "a joining replica's identity needs protocol version 3".into(),
                    });
                }
                body.put_u8(IDENTITY_JOINING);
                body.put_slice(&identity.instance.0);
                body.put_u64(identity.sessions_max);
            }
            Some(identity) => {
                check_members(&identity.members).map_err(|reason| WireError::InvalidHello {
                    reason: format!("identity: {reason}"),
                })?;
                body.put_u8(IDENTITY_PRESENT);
                body.put_slice(&identity.cluster_uid.0);
                body.put_slice(&identity.instance.0);
                put_ids(&mut body, &identity.members);
                body.put_u64(identity.sessions_max);
                if self.version >= 4 {
                    let addr = identity.peer_addr.as_bytes();
                    if addr.len() > PEER_ADDR_BYTES_MAX {
                        return Err(WireError::InvalidHello {
                            reason: format!(
                                "peer address is {} bytes long; at most \
                                 {PEER_ADDR_BYTES_MAX} are allowed",
                                addr.len()
                            ),
                        });
                    }
                    body.put_u64(identity.configuration);
                    body.put_u8(addr.len() as u8);
                    body.put_slice(addr);
                }
            }
        }
        Ok(record(self.magic, self.version, &body))
    }

    /// Decodes a hello record: a pure function that never panics.
    ///
    /// The error is the refusal to send back: bad magic, an unsupported version (decided
    /// before the body is parsed), or a malformed body.
    pub fn decode(record: &[u8]) -> Result<Hello, HandshakeRefusal> {
        let (version, body) = split_record(record)?;
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version) {
            return Err(HandshakeRefusal::UnsupportedVersion {
                got: version,
                min: PROTOCOL_VERSION_MIN,
                max: PROTOCOL_VERSION,
            });
        }
        let mut r = Reader(body);
        let role = r.role()?;
        let id_len = usize::from(r.u8()?);
        if id_len == 0 || id_len > CLUSTER_ID_BYTES_MAX {
            return Err(malformed(format!(
                "cluster id length {id_len} is outside 1..={CLUSTER_ID_BYTES_MAX}"
            )));
        }
        let cluster_id = std::str::from_utf8(r.take(id_len)?)
            .map_err(|_| malformed("cluster id is not UTF-8"))?
            .to_owned();
        let identity = match (r.u8()?, role) {
            (IDENTITY_NONE, _) => None,
            (IDENTITY_PRESENT, PeerRole::Replica(_)) => Some(r.identity(version)?),
            (IDENTITY_JOINING, PeerRole::Replica(_)) if version >= 3 => Some(r.joining()?),
            (IDENTITY_PRESENT | IDENTITY_JOINING, PeerRole::Client) => {
                return Err(malformed("a client carries a replica identity"))
            }
            (other, _) => return Err(malformed(format!("unknown identity tag {other}"))),
        };
        r.finish()?;
        Ok(Hello {
            magic: MAGIC,
            version,
            cluster_id,
            role,
            identity,
        })
    }
}

impl HelloReply {
    /// Encodes this reply as a record (header and body). Text longer than
    /// [`REPLY_TEXT_BYTES_MAX`] is cut.
    pub fn encode(&self) -> Bytes {
        let mut body = BytesMut::new();
        match self {
            HelloReply::Accepted(accepted) => {
                body.put_u8(OUTCOME_ACCEPTED);
                body.put_u64(accepted.node_id);
                body.put_u16(accepted.version);
                if accepted.version >= 3 {
                    match &accepted.cluster {
                        None => body.put_u8(CLUSTER_NONE),
                        Some(cluster) => {
                            body.put_u8(CLUSTER_PRESENT);
                            body.put_slice(&cluster.cluster_uid.0);
                            put_ids(&mut body, &cluster.members);
                            put_ids(&mut body, &cluster.voters);
                        }
                    }
                }
            }
            HelloReply::Refused(refusal) => {
                body.put_u8(OUTCOME_REFUSED);
                put_refusal(&mut body, refusal);
            }
        }
        record(MAGIC, PROTOCOL_VERSION, &body)
    }

    /// Decodes a reply record: a pure function that never panics.
    ///
    /// The reply's layout does not depend on the version in its header, so a reply from a
    /// peer of any version is read; an unknown refusal code becomes
    /// [`HandshakeRefusal::Other`].
    pub fn decode(record: &[u8]) -> Result<HelloReply, HandshakeRefusal> {
        let (_version, body) = split_record(record)?;
        let mut r = Reader(body);
        match r.u8()? {
            OUTCOME_ACCEPTED => {
                let node_id = r.u64()?;
                let version = r.u16()?;
                let cluster = if version >= 3 {
                    match r.u8()? {
                        CLUSTER_NONE => None,
                        CLUSTER_PRESENT => Some(ClusterInfo {
                            cluster_uid: r.uid()?,
                            members: r.ids()?,
                            voters: r.ids()?,
                        }),
                        other => return Err(malformed(format!("unknown cluster tag {other}"))),
                    }
                } else {
                    None
                };
                r.finish()?;
                Ok(HelloReply::Accepted(Accepted {
                    node_id,
                    version,
                    cluster,
                }))
            }
            OUTCOME_REFUSED => Ok(HelloReply::Refused(refusal(&mut r)?)),
            other => Err(malformed(format!("unknown reply outcome {other}"))),
        }
    }
}

/// Header fields of a record, as far as `prefix` holds them: what a reader needs to know
/// how many more bytes belong to the record.
///
/// Returns `Ok(None)` if more header bytes are needed, `Ok(Some(body_len))` once the
/// header is complete, and an error as soon as the magic is wrong.
pub fn body_len(prefix: &[u8]) -> Result<Option<usize>, HandshakeRefusal> {
    let magic_part = &prefix[..prefix.len().min(MAGIC.len())];
    if magic_part != &MAGIC[..magic_part.len()] {
        return Err(HandshakeRefusal::BadMagic {
            got: magic_part.to_vec(),
        });
    }
    match prefix.get(6..RECORD_HEADER_BYTES) {
        Some(len) => Ok(Some(usize::from(u16::from_be_bytes([len[0], len[1]])))),
        None => Ok(None),
    }
}

fn record(magic: [u8; 4], version: u16, body: &[u8]) -> Bytes {
    debug_assert!(body.len() <= usize::from(u16::MAX));
    let mut out = BytesMut::with_capacity(RECORD_HEADER_BYTES + body.len());
    out.put_slice(&magic);
    out.put_u16(version);
    out.put_u16(body.len() as u16);
    out.put_slice(body);
    out.freeze()
}

/// Checks the magic and the body length; returns the version and the body.
fn split_record(record: &[u8]) -> Result<(u16, &[u8]), HandshakeRefusal> {
    let Some(len) = body_len(record)? else {
        return Err(malformed(format!(
            "truncated: {} bytes, shorter than the {RECORD_HEADER_BYTES}-byte header",
            record.len()
        )));
    };
    let version = u16::from_be_bytes([record[4], record[5]]);
    let body = &record[RECORD_HEADER_BYTES..];
    if body.len() != len {
        return Err(malformed(format!(
            "the header announces {len} body bytes but {} follow",
            body.len()
        )));
    }
    Ok((version, body))
}

fn put_role(out: &mut BytesMut, role: PeerRole) {
    match role {
        PeerRole::Client => {
            out.put_u8(ROLE_CLIENT);
            out.put_u64(0);
        }
        PeerRole::Replica(id) => {
            out.put_u8(ROLE_REPLICA);
            out.put_u64(id);
        }
    }
}

/// Member ids must be 1 to [`IDENTITY_MEMBERS_MAX`], strictly ascending.
fn check_members(ids: &[u64]) -> Result<(), String> {
    if ids.is_empty() || ids.len() > IDENTITY_MEMBERS_MAX {
        return Err(format!(
            "{} members; 1 to {IDENTITY_MEMBERS_MAX} are allowed",
            ids.len()
        ));
    }
    if ids.windows(2).any(|w| w[0] >= w[1]) {
        return Err("member ids are not strictly ascending".into());
    }
    Ok(())
}

/// A list of ids: u8 count, then u64 each. At most 255 are written (lists are checked or
/// come from checked hellos, so this never cuts in practice).
fn put_ids(out: &mut BytesMut, ids: &[u64]) {
    let ids = &ids[..ids.len().min(usize::from(u8::MAX))];
    out.put_u8(ids.len() as u8);
    for id in ids {
        out.put_u64(*id);
    }
}

fn put_text(out: &mut BytesMut, text: &str) {
    let mut end = text.len().min(REPLY_TEXT_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&text.as_bytes()[..end]);
}

fn put_refusal(out: &mut BytesMut, refusal: &HandshakeRefusal) {
    let code = match refusal {
        HandshakeRefusal::BadMagic { .. } => CODE_BAD_MAGIC,
        HandshakeRefusal::UnsupportedVersion { .. } => CODE_UNSUPPORTED_VERSION,
        HandshakeRefusal::ClusterMismatch { .. } => CODE_CLUSTER_MISMATCH,
        HandshakeRefusal::UnknownNode { .. } => CODE_UNKNOWN_NODE,
        HandshakeRefusal::UnexpectedRole { .. } => CODE_UNEXPECTED_ROLE,
        HandshakeRefusal::Malformed { .. } => CODE_MALFORMED,
        HandshakeRefusal::MembershipMismatch { .. } => CODE_MEMBERSHIP_MISMATCH,
        HandshakeRefusal::SessionsMaxMismatch { .. } => CODE_SESSIONS_MAX_MISMATCH,
        HandshakeRefusal::ClusterUidMismatch { .. } => CODE_CLUSTER_UID_MISMATCH,
        HandshakeRefusal::MemberReplaced { .. } => CODE_MEMBER_REPLACED,
        HandshakeRefusal::MissingIdentity { .. } => CODE_MISSING_IDENTITY,
        HandshakeRefusal::Removed { .. } => CODE_REMOVED,
        HandshakeRefusal::TlsRequired => CODE_TLS_REQUIRED,
        HandshakeRefusal::CertificateMismatch { .. } => CODE_CERTIFICATE_MISMATCH,
        HandshakeRefusal::CertificateNamesNoMember { .. } => CODE_CERTIFICATE_NAMES_NO_MEMBER,
        HandshakeRefusal::Other { code, .. } => *code,
    };
    out.put_u8(code);
    match refusal {
        // An unknown refusal is passed on with its peer's text, not ours.
        HandshakeRefusal::Other { message, .. } => put_text(out, message),
        known => put_text(out, &known.to_string()),
    }
    match refusal {
        HandshakeRefusal::BadMagic { got } => {
            let got = &got[..got.len().min(MAGIC.len())];
            out.put_u8(got.len() as u8);
            out.put_slice(got);
        }
        HandshakeRefusal::UnsupportedVersion { got, min, max } => {
            out.put_u16(*got);
            out.put_u16(*min);
            out.put_u16(*max);
        }
        HandshakeRefusal::ClusterMismatch { expected, got } => {
            put_text(out, expected);
            put_text(out, got);
        }
        HandshakeRefusal::UnknownNode { node_id } => out.put_u64(*node_id),
        HandshakeRefusal::UnexpectedRole { got } => put_role(out, *got),
        HandshakeRefusal::Malformed { reason } => put_text(out, reason),
        HandshakeRefusal::MembershipMismatch { expected, got } => {
            put_ids(out, expected);
            put_ids(out, got);
        }
        HandshakeRefusal::SessionsMaxMismatch { expected, got } => {
            out.put_u64(*expected);
            out.put_u64(*got);
        }
        HandshakeRefusal::ClusterUidMismatch { expected, got } => {
            out.put_slice(&expected.0);
            out.put_slice(&got.0);
        }
        HandshakeRefusal::MemberReplaced {
            node_id,
            known,
            got,
        } => {
            out.put_u64(*node_id);
            out.put_slice(&known.0);
            out.put_slice(&got.0);
        }
        HandshakeRefusal::MissingIdentity { node_id } => out.put_u64(*node_id),
        HandshakeRefusal::Removed {
            node_id,
            configuration,
        } => {
            out.put_u64(*node_id);
            out.put_u64(*configuration);
        }
        HandshakeRefusal::TlsRequired => {}
        HandshakeRefusal::CertificateMismatch { claimed, certified } => {
            out.put_u64(*claimed);
            out.put_u64(*certified);
        }
        HandshakeRefusal::CertificateNamesNoMember { claimed, reason } => {
            out.put_u64(*claimed);
            put_text(out, reason);
        }
        HandshakeRefusal::Other { .. } => {}
    }
}

fn refusal(r: &mut Reader<'_>) -> Result<HandshakeRefusal, HandshakeRefusal> {
    let code = r.u8()?;
    let message = r.text()?;
    let refusal = match code {
        CODE_BAD_MAGIC => {
            let len = usize::from(r.u8()?);
            if len > MAGIC.len() {
                return Err(malformed(format!("bad-magic refusal carries {len} bytes")));
            }
            HandshakeRefusal::BadMagic {
                got: r.take(len)?.to_vec(),
            }
        }
        CODE_UNSUPPORTED_VERSION => HandshakeRefusal::UnsupportedVersion {
            got: r.u16()?,
            min: r.u16()?,
            max: r.u16()?,
        },
        CODE_CLUSTER_MISMATCH => HandshakeRefusal::ClusterMismatch {
            expected: r.text()?,
            got: r.text()?,
        },
        CODE_UNKNOWN_NODE => HandshakeRefusal::UnknownNode { node_id: r.u64()? },
        CODE_UNEXPECTED_ROLE => HandshakeRefusal::UnexpectedRole { got: r.role()? },
        CODE_MALFORMED => HandshakeRefusal::Malformed { reason: r.text()? },
        CODE_MEMBERSHIP_MISMATCH => HandshakeRefusal::MembershipMismatch {
            expected: r.ids()?,
            got: r.ids()?,
        },
        CODE_SESSIONS_MAX_MISMATCH => HandshakeRefusal::SessionsMaxMismatch {
            expected: r.u64()?,
            got: r.u64()?,
        },
        CODE_CLUSTER_UID_MISMATCH => HandshakeRefusal::ClusterUidMismatch {
            expected: r.uid()?,
            got: r.uid()?,
        },
        CODE_MEMBER_REPLACED => HandshakeRefusal::MemberReplaced {
            node_id: r.u64()?,
            known: r.uid()?,
            got: r.uid()?,
        },
        CODE_MISSING_IDENTITY => HandshakeRefusal::MissingIdentity { node_id: r.u64()? },
        CODE_REMOVED => HandshakeRefusal::Removed {
            node_id: r.u64()?,
            configuration: r.u64()?,
        },
        CODE_TLS_REQUIRED => HandshakeRefusal::TlsRequired,
        CODE_CERTIFICATE_MISMATCH => HandshakeRefusal::CertificateMismatch {
            claimed: r.u64()?,
            certified: r.u64()?,
        },
        CODE_CERTIFICATE_NAMES_NO_MEMBER => HandshakeRefusal::CertificateNamesNoMember {
            claimed: r.u64()?,
            reason: r.text()?,
        },
        // A newer peer's refusal: its fields are unknown here, its text says it all.
        code => return Ok(HandshakeRefusal::Other { code, message }),
    };
    r.finish()?;
    Ok(refusal)
}

fn malformed(reason: impl Into<String>) -> HandshakeRefusal {
    HandshakeRefusal::Malformed {
        reason: reason.into(),
    }
}

/// A cursor over a record body whose reads fail, rather than panic, past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HandshakeRefusal> {
        if self.0.len() < n {
            return Err(malformed(format!(
                "truncated: needed {n} more bytes, {} left",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], HandshakeRefusal> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, HandshakeRefusal> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, HandshakeRefusal> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, HandshakeRefusal> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A text field; invalid UTF-8 is replaced rather than refused, since text is only
    /// ever printed.
    fn text(&mut self) -> Result<String, HandshakeRefusal> {
        let len = usize::from(self.u16()?);
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }

    fn uid(&mut self) -> Result<Uid, HandshakeRefusal> {
        Ok(Uid(self.array()?))
    }

    /// A list of ids (u8 count, then u64 each); bounded by its one-byte count.
    fn ids(&mut self) -> Result<Vec<u64>, HandshakeRefusal> {
        let count = self.u8()?;
        (0..count).map(|_| self.u64()).collect()
    }

    fn identity(&mut self, version: u16) -> Result<ReplicaIdentity, HandshakeRefusal> {
        let cluster_uid = self.uid()?;
        let instance = self.uid()?;
        let members = self.ids()?;
        check_members(&members).map_err(|reason| malformed(format!("identity: {reason}")))?;
        let sessions_max = self.u64()?;
        let (configuration, peer_addr) = if version >= 4 {
            let configuration = self.u64()?;
            let len = usize::from(self.u8()?);
            let addr = std::str::from_utf8(self.take(len)?)
                .map_err(|_| malformed("peer address is not UTF-8"))?;
            (configuration, addr.to_owned())
        } else {
            (0, String::new())
        };
        Ok(ReplicaIdentity {
            cluster_uid,
            instance,
            members,
            sessions_max,
            joining: false,
            configuration,
            peer_addr,
        })
    }

    fn joining(&mut self) -> Result<ReplicaIdentity, HandshakeRefusal> {
        let instance = self.uid()?;
        Ok(ReplicaIdentity::joining(instance, self.u64()?))
    }

    fn role(&mut self) -> Result<PeerRole, HandshakeRefusal> {
        let tag = self.u8()?;
        let node_id = self.u64()?;
        match tag {
            ROLE_CLIENT if node_id == 0 => Ok(PeerRole::Client),
            ROLE_CLIENT => Err(malformed(format!("client carries node id {node_id}"))),
            ROLE_REPLICA => Ok(PeerRole::Replica(node_id)),
            other => Err(malformed(format!("unknown role {other}"))),
        }
    }

    fn finish(&self) -> Result<(), HandshakeRefusal> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!("{} trailing bytes", self.0.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_bytes_are_pinned() {
        let hello = Hello::new("ab", PeerRole::Replica(0x0102));
        let bytes = hello.encode().unwrap();
        let expected: &[u8] = &[
            b'K', b'V', b'S', b'W', // magic
            0, 4, // version
            0, 13, // body length
            1,  // replica
            0, 0, 0, 0, 0, 0, 1, 2, // node id
            2, b'a', b'b', // cluster id
            0,    // no identity
        ];
        assert_eq!(&bytes[..], expected);
        assert_eq!(Hello::decode(&bytes), Ok(hello));
    }

    #[test]
    fn identity_bytes_are_pinned() {
        let identity = ReplicaIdentity {
            cluster_uid: Uid([0xaa; 16]),
            instance: Uid([0xbb; 16]),
            members: vec![1, 3],
            sessions_max: 5,
            joining: false,
            configuration: 7,
            peer_addr: "h:1".into(),
        };
        let bytes = Hello::replica("ab", 3, identity.clone()).encode().unwrap();
        let mut expected = vec![b'K', b'V', b'S', b'W', 0, 4, 0, 82, 1];
        expected.extend_from_slice(&3u64.to_be_bytes());
        expected.extend_from_slice(&[2, b'a', b'b', 1]);
        expected.extend_from_slice(&[0xaa; 16]);
        expected.extend_from_slice(&[0xbb; 16]);
        expected.push(2);
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&3u64.to_be_bytes());
        expected.extend_from_slice(&5u64.to_be_bytes());
        expected.extend_from_slice(&7u64.to_be_bytes());
        expected.extend_from_slice(&[3, b'h', b':', b'1']);
        assert_eq!(&bytes[..], &expected[..]);
        let decoded = Hello::decode(&bytes).unwrap();
        assert_eq!(decoded.identity, Some(identity.clone()));
        // Version 3 had neither the configuration nor the address: they decode as none.
        let mut v3 = Hello::replica("ab", 3, identity.clone());
        v3.version = 3;
        let decoded = Hello::decode(&v3.encode().unwrap()).unwrap();
        assert_eq!(
            decoded.identity,
            Some(ReplicaIdentity {
                configuration: 0,
                peer_addr: String::new(),
                ..identity.clone()
            })
        );
        // An address that is too long, or not UTF-8, is refused.
        let long = ReplicaIdentity {
            peer_addr: "a".repeat(PEER_ADDR_BYTES_MAX + 1),
            ..identity
        };
        assert!(Hello::replica("ab", 3, long).encode().is_err());
        let mut bad = expected.clone();
        let last = bad.len() - 1;
        bad[last] = 0xff;
        assert!(matches!(
            Hello::decode(&bad),
            Err(HandshakeRefusal::Malformed { .. })
        ));
    }

    #[test]
    fn bad_identities_are_refused() {
        let mut identity = ReplicaIdentity {
            cluster_uid: Uid([1; 16]),
            instance: Uid([2; 16]),
            members: vec![2, 1],
            sessions_max: 5,
            joining: false,
            configuration: 1,
            peer_addr: String::new(),
        };
        assert!(Hello::replica("c", 1, identity.clone()).encode().is_err());
        identity.members = vec![1, 2];
        let mut bytes = Hello::replica("c", 1, identity).encode().unwrap().to_vec();
        // Swap the two member ids in place: no longer ascending.
        let first = 8 + 1 + 8 + 1 + 1 + 1 + 32 + 1;
        bytes[first + 7] = 2;
        bytes[first + 15] = 1;
        assert!(matches!(
            Hello::decode(&bytes),
            Err(HandshakeRefusal::Malformed { .. })
        ));
        // A client with an identity is malformed.
        let mut client = Hello::new("c", PeerRole::Client).encode().unwrap().to_vec();
        *client.last_mut().unwrap() = IDENTITY_PRESENT;
        assert!(matches!(
            Hello::decode(&client),
            Err(HandshakeRefusal::Malformed { .. })
        ));
    }

    #[test]
    fn a_joining_identity_and_the_cluster_it_is_told_are_pinned() {
        let identity = ReplicaIdentity::joining(Uid([0xbb; 16]), 5);
        let bytes = Hello::replica("ab", 4, identity.clone()).encode().unwrap();
        let mut expected = vec![b'K', b'V', b'S', b'W', 0, 4, 0, 37, 1];
        expected.extend_from_slice(&4u64.to_be_bytes());
        expected.extend_from_slice(&[2, b'a', b'b', 2]);
        expected.extend_from_slice(&[0xbb; 16]);
        expected.extend_from_slice(&5u64.to_be_bytes());
        assert_eq!(&bytes[..], &expected[..]);
        assert_eq!(
            Hello::decode(&bytes).unwrap().identity,
            Some(identity.clone())
        );
        // Version 2 has no joining identity.
        let mut old = Hello::replica("ab", 4, identity);
        old.version = 2;
        assert!(old.encode().is_err());
        let mut v2 = expected.clone();
        v2[5] = 2;
        assert!(matches!(
            Hello::decode(&v2),
            Err(HandshakeRefusal::Malformed { .. })
        ));

        let accepted = HelloReply::Accepted(Accepted {
            node_id: 1,
            version: 3,
            cluster: Some(ClusterInfo {
                cluster_uid: Uid([0xaa; 16]),
                members: vec![1, 2, 3],
                voters: vec![1, 2, 4],
            }),
        });
        let bytes = accepted.encode();
        assert_eq!(HelloReply::decode(&bytes), Ok(accepted));
        // Cut anywhere, it is refused, never misread.
        for len in RECORD_HEADER_BYTES..bytes.len() {
            let mut cut = bytes[..len].to_vec();
            let body = (len - RECORD_HEADER_BYTES) as u16;
            cut[6..8].copy_from_slice(&body.to_be_bytes());
            assert!(HelloReply::decode(&cut).is_err(), "cut to {len}");
        }
        // A version-2 acceptance has no cluster field, and reads as before.
        let v2 = HelloReply::Accepted(Accepted {
            node_id: 1,
            version: 2,
            cluster: None,
        });
        assert_eq!(v2.encode().len(), RECORD_HEADER_BYTES + 11);
        assert_eq!(HelloReply::decode(&v2.encode()), Ok(v2));
    }

    #[test]
    fn body_len_needs_only_the_header() {
        assert_eq!(body_len(b""), Ok(None));
        assert_eq!(body_len(b"KVS"), Ok(None));
        assert_eq!(body_len(b"KVSW\x00\x01\x00\x0c"), Ok(Some(12)));
        assert_eq!(
            body_len(b"KVX"),
            Err(HandshakeRefusal::BadMagic {
                got: b"KVX".to_vec()
            })
        );
    }

    #[test]
    fn long_text_is_cut_at_a_char_boundary() {
        let reason = "é".repeat(REPLY_TEXT_BYTES_MAX);
        let reply = HelloReply::Refused(HandshakeRefusal::Malformed { reason });
        let Ok(HelloReply::Refused(HandshakeRefusal::Malformed { reason })) =
            HelloReply::decode(&reply.encode())
        else {
            panic!("reply does not decode");
        };
        assert_eq!(reason.len(), REPLY_TEXT_BYTES_MAX);
    }
}
