//! The backup file: a snapshot streamed from the leader (`kvs-client snapshot save`),
//! behind a header that says what it is, and read back by `kvs-client snapshot status` and
//! `kvs-server restore`.
//!
//! Layout (integers little-endian):
//! ```text
//! magic "KVSBACKP" | version u32 | header length u32 (all the header, this checksum included)
//! | cluster identity [16] | slot u64 | keys u64 | body length u64 | body crc32c u32
//! | cluster name length u16 | cluster name (UTF-8, at most 255 bytes)
//! | header crc32c u32 over every header byte before it
//! | body: the server's snapshot file, as it was on the leader (its own format and checksum)
//! ```
//! The header checksum catches damage in the header, the body checksum (CRC32C, as
//! everywhere in the project) any change to the body, and the body length a file cut
//! short or with bytes after its end. The body is opaque here: the server parses it.
//!
//! The body checksum starts from the CRC32C of the magic ([`body_crc32c_start`]), not from
//! zero: a snapshot body ends with its own CRC32C, and a CRC32C from zero over bytes that end
//! with their own CRC32C is the same constant for every body, so it would not tell two
//! backups apart.

use std::io::{self, Read};

use crate::handshake::Uid;

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"KVSBACKP";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Longest cluster name kept in a header, in bytes.
pub const CLUSTER_NAME_BYTES_MAX: usize = 255;
/// Header bytes before the cluster name.
const FIXED_BYTES: usize = 8 + 4 + 4 + 16 + 8 + 8 + 8 + 4 + 2;
/// The buffer [`verify`] reads the body with.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// What a backup file holds, as its header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupHeader {
    /// The format version ([`VERSION`]).
    pub version: u32,
    /// The identity of the cluster it was taken from.
    pub cluster_uid: Uid,
    /// The name (`--cluster-id`) of the cluster it was taken from.
    pub cluster_name: String,
    /// The snapshot covers every slot below this one.
    pub slot: u64,
    /// Keys in the snapshot.
    pub keys: u64,
    /// Length of the body (the snapshot), in bytes.
    pub body_bytes: u64,
    /// CRC32C of the body, from [`body_crc32c_start`].
    pub body_crc32c: u32,
}

/// Why a backup file is not valid. The caller names the file.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading failed.
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
    /// The file ends before it should.
    #[error("truncated: the file ends inside {what}")]
    Truncated {
        /// The part it ends in.
        what: &'static str,
    },
    /// It does not start with [`MAGIC`].
    #[error("not a kvs backup file (bad magic bytes)")]
    BadMagic,
    /// A version this build does not read.
    #[error(
        "backup format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// The file's version.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The header checksum does not match.
    #[error("the header is damaged (checksum mismatch)")]
    HeaderChecksum,
    /// A header field makes no sense.
    #[error("the header is invalid: {reason}")]
    BadHeader {
        /// What is wrong.
        reason: String,
    },
    /// The body's checksum does not match the header's.
    #[error("the body is damaged: its CRC32C is {found:08x}, the header says {expected:08x}")]
    BodyChecksum {
        /// The header's checksum.
        expected: u32,
        /// The body's.
        found: u32,
    },
    /// Bytes follow the body.
    #[error("{extra} unexpected bytes after the body (the header says {body_bytes} bytes)")]
    TrailingBytes {
        /// The body length the header gives.
        body_bytes: u64,
        /// How many bytes follow it (at least).
        extra: u64,
    },
}

impl BackupHeader {
    /// The encoded header, checksum included.
    pub fn encode(&self) -> Result<Vec<u8>, BackupError> {
        let name = self.cluster_name.as_bytes();
        if name.len() > CLUSTER_NAME_BYTES_MAX {
            return Err(BackupError::BadHeader {
                reason: format!(
                    "the cluster name is {} bytes, at most {CLUSTER_NAME_BYTES_MAX} allowed",
                    name.len()
                ),
            });
        }
        let len = FIXED_BYTES + name.len() + 4;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&self.cluster_uid.0);
        out.extend_from_slice(&self.slot.to_le_bytes());
        out.extend_from_slice(&self.keys.to_le_bytes());
        out.extend_from_slice(&self.body_bytes.to_le_bytes());
        out.extend_from_slice(&self.body_crc32c.to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len(), len);
        Ok(out)
    }

    /// Reads and checks a header from the start of `input`, leaving `input` at the body.
    /// Returns it and its length in bytes.
    pub fn read_from(input: &mut impl Read) -> Result<(BackupHeader, usize), BackupError> {
        let mut fixed = [0u8; FIXED_BYTES];
        read_exact(input, &mut fixed[..8], "the magic bytes")?;
        if &fixed[..8] != MAGIC {
            return Err(BackupError::BadMagic);
        }
        read_exact(input, &mut fixed[8..], "the header")?;
        let mut at = Cursor {
            bytes: &fixed,
            pos: 8,
        };
        let version = at.u32();
        if version != VERSION {
            return Err(BackupError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let len = at.u32() as usize;
        let mut uid = [0u8; 16];
        uid.copy_from_slice(at.take(16));
        let slot = at.u64();
        let keys = at.u64();
        let body_bytes = at.u64();
        let body_crc32c = at.u32();
        let name_len = usize::from(at.u16());
        if name_len > CLUSTER_NAME_BYTES_MAX || len != FIXED_BYTES + name_len + 4 {
            return Err(BackupError::HeaderChecksum);
        }
        let mut rest = vec![0u8; name_len + 4];
        read_exact(input, &mut rest, "the header")?;
        let (name, crc) = rest.split_at(name_len);
        let mut crc_bytes = [0u8; 4];
        crc_bytes.copy_from_slice(crc);
        let expected = crc32c::crc32c_append(crc32c::crc32c(&fixed), name);
        if u32::from_le_bytes(crc_bytes) != expected {
            return Err(BackupError::HeaderChecksum);
        }
        let cluster_name =
            String::from_utf8(name.to_vec()).map_err(|_| BackupError::BadHeader {
                reason: "the cluster name is not UTF-8".to_owned(),
            })?;
        let header = BackupHeader {
            version,
            cluster_uid: Uid(uid),
            cluster_name,
            slot,
            keys,
            body_bytes,
            body_crc32c,
        };
        Ok((header, len))
    }
}

/// Reads a whole backup from `input` and checks it: the header, the body's length and
/// checksum, nothing after it. Returns the header.
pub fn verify(input: impl Read) -> Result<BackupHeader, BackupError> {
    verify_with(input, |_| Ok(()))
}

/// [`verify`], handing each piece of the body to `sink` as it is read (to copy or parse it
/// in the same pass); an error of `sink` ends it. Whatever `sink` got is to be discarded
/// unless this returns `Ok`.
pub fn verify_with(
    mut input: impl Read,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<BackupHeader, BackupError> {
    let (header, _) = BackupHeader::read_from(&mut input)?;
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut left = header.body_bytes;
    let mut crc = body_crc32c_start();
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = read_some(&mut input, &mut buf[..want])?;
        if n == 0 {
            return Err(BackupError::Truncated { what: "the body" });
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        sink(&buf[..n])?;
        left -= n as u64;
    }
    let extra = read_some(&mut input, &mut buf)?;
    if extra > 0 {
        return Err(BackupError::TrailingBytes {
            body_bytes: header.body_bytes,
            extra: extra as u64,
        });
    }
    if crc != header.body_crc32c {
        return Err(BackupError::BodyChecksum {
            expected: header.body_crc32c,
            found: crc,
        });
    }
    Ok(header)
}

/// Where the body's running checksum starts: the CRC32C of [`MAGIC`].
pub fn body_crc32c_start() -> u32 {
    crc32c::crc32c(MAGIC)
}

/// Extends the body's running checksum (from [`body_crc32c_start`]) with `bytes`.
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// Reads what is available, retrying interruptions.
fn read_some(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match input.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn read_exact(
    input: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), BackupError> {
    match input.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(BackupError::Truncated { what }),
        Err(e) => Err(BackupError::Io(e)),
    }
}

/// Reads fixed-size fields from a slice of known length.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        b.copy_from_slice(self.take(2));
        u16::from_le_bytes(b)
    }
    fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4));
        u32::from_le_bytes(b)
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8));
        u64::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup of `body` as a file's bytes.
    fn backup(body: &[u8]) -> Vec<u8> {
        let header = BackupHeader {
            version: VERSION,
            cluster_uid: Uid([7; 16]),
            cluster_name: "prod".to_owned(),
            slot: 12_345,
            keys: 3,
            body_bytes: body.len() as u64,
            body_crc32c: crc32c_append(body_crc32c_start(), body),
        };
        let mut file = header.encode().expect("a short name");
        file.extend_from_slice(body);
        file
    }

    fn body() -> Vec<u8> {
        (0..5000u32).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn a_backup_reads_back_with_its_header_and_body() {
        let file = backup(&body());
        let mut seen = Vec::new();
        let header = verify_with(&file[..], |b| {
            seen.extend_from_slice(b);
            Ok(())
        })
        .expect("valid");
        assert_eq!(seen, body());
        assert_eq!(header.slot, 12_345);
        assert_eq!(header.keys, 3);
        assert_eq!(header.cluster_name, "prod");
        assert_eq!(header.cluster_uid, Uid([7; 16]));
        assert_eq!(header.body_bytes, 5000);
    }

    #[test]
    fn a_backup_cut_short_anywhere_is_refused_as_truncated() {
        let file = backup(&body());
        for len in 0..file.len() {
            match verify(&file[..len]) {
                Err(BackupError::Truncated { .. }) => {}
                other => panic!("cut at {len} of {}: {other:?}", file.len()),
            }
        }
    }

    #[test]
    fn a_changed_byte_anywhere_is_detected() {
        let file = backup(&body());
        for at in 0..file.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = file.clone();
                bad[at] ^= flip;
                assert!(
                    verify(&bad[..]).is_err(),
                    "byte {at} ^ {flip:#x} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn bodies_that_end_with_their_own_checksum_still_have_checksums_of_their_own() {
        let sealed = |data: &[u8]| {
            let mut body = data.to_vec();
            body.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
            crc32c_append(body_crc32c_start(), &body)
        };
        assert_ne!(sealed(b"one snapshot"), sealed(b"another snapshot"));
    }

    #[test]
    fn bytes_after_the_body_are_refused() {
        let mut file = backup(&body());
        file.push(0);
        assert!(matches!(
            verify(&file[..]),
            Err(BackupError::TrailingBytes { extra: 1, .. })
        ));
    }

    #[test]
    fn a_wrong_magic_or_version_is_named() {
        let mut file = backup(b"x");
        file[0] = b'X';
        assert!(matches!(verify(&file[..]), Err(BackupError::BadMagic)));
        let mut file = backup(b"x");
        file[8..12].copy_from_slice(&2u32.to_le_bytes());
        let err = verify(&file[..]).expect_err("version 2");
        assert!(matches!(
            err,
            BackupError::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        ));
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn an_empty_body_and_a_long_name_are_handled() {
        verify(&backup(b"")[..]).expect("an empty body is valid");
        let header = BackupHeader {
            version: VERSION,
            cluster_uid: Uid::default(),
            cluster_name: "n".repeat(CLUSTER_NAME_BYTES_MAX + 1),
            slot: 0,
            keys: 0,
            body_bytes: 0,
            body_crc32c: 0,
        };
        assert!(matches!(
            header.encode(),
            Err(BackupError::BadHeader { .. })
        ));
    }
}
