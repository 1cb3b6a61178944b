//! Object ids and namespaces.
//!
//! # Derivation
//!
//! An [`ObjectId`] is 32 bytes, printed as 64 lowercase hex characters:
//!
//! | bytes    | hex chars | content                                               |
//! | -------- | --------- | ----------------------------------------------------- |
//! | `0..8`   | `0..16`   | namespace tag: `blake3::derive_key("odo 2026 namespace tag", ns)[0..8]` |
//! | `8..28`  | `16..56`  | body: 20 bytes, from the name or random (below)       |
//! | `28..32` | `56..64`  | check: `blake3::keyed_hash(K, bytes[0..28])[0..4]`    |
//!
//! where `ns` is the namespace's name as UTF-8 and
//! `K = blake3::derive_key("odo 2026 namespace key", ns)` is the namespace
//! key.
//!
//! - [`Namespace::id_from_name`]: body = `blake3::keyed_hash(K, 0x01 || name)[0..20]`.
//!   Deterministic; because `K` depends on the namespace, the same name gives
//!   unrelated ids in two namespaces.
//! - [`Namespace::new_unique_id`]: body = `0x00 || 19 random bytes` from the
//!   operating system's generator (`getrandom`). The leading zero byte is not
//!   a secret marker: it only keeps the two kinds apart when debugging.
//!   (A name-derived body starts with `0x00` one time in 256, so the marker is
//!   a hint, never a test.)
//!
//! The namespace tag lets [`Namespace::id_from_string`] reject an id minted
//! by another namespace, and the check bytes let it reject a mistyped id. The
//! derivation is fixed: changing any constant above changes every id, and so
//! where every object's data lives.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

const TAG_LEN: usize = 8;
const BODY_END: usize = 28;
const ID_LEN: usize = 32;
const HEX_LEN: usize = ID_LEN * 2;

const TAG_CONTEXT: &str = "odo 2026 namespace tag";
const KEY_CONTEXT: &str = "odo 2026 namespace key";

/// The id of one Durable Object: 32 bytes, written as 64 lowercase hex
/// characters. The first 16 characters identify the namespace that minted it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectId([u8; ID_LEN]);

impl ObjectId {
    /// The raw bytes of the id.
    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    /// Rebuilds an id from raw bytes (for example read back from storage).
    ///
    /// No check is made: use [`Namespace::id_from_string`] for ids that come
    /// from users.
    pub fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The namespace tag embedded in the id.
    pub fn namespace_tag(&self) -> NamespaceTag {
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&self.0[..TAG_LEN]);
        NamespaceTag(tag)
    }

    /// The virtual shard of this id among `shard_count` shards.
    ///
    /// `shard = u64::from_le_bytes(bytes[8..16]) mod shard_count`. Bytes
    /// `8..16` are hash output or random, so shards fill evenly.
    ///
    /// # Panics
    ///
    /// Panics if `shard_count` is zero, which is a configuration bug.
    pub fn shard(&self, shard_count: u32) -> u32 {
        assert!(shard_count > 0, "shard count must be positive");
        let mut word = [0; 8];
        word.copy_from_slice(&self.0[TAG_LEN..TAG_LEN + 8]);
        (u64::from_le_bytes(word) % u64::from(shard_count)) as u32
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; HEX_LEN];
        for (i, byte) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(byte >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
        }
        // The buffer only holds ASCII hex digits.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

impl FromStr for ObjectId {
    type Err = IdError;

    /// Parses 64 hex characters (either case) without checking the namespace
    /// or the check bytes. Use [`Namespace::id_from_string`] for user input.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s).map(ObjectId)
    }
}

/// The 8-byte tag of a namespace, the first 16 hex characters of its ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NamespaceTag([u8; TAG_LEN]);

impl fmt::Debug for NamespaceTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NamespaceTag(")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        f.write_str(")")
    }
}

/// Why a string is not an id of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string does not have exactly 64 characters.
    #[error("an object id has 64 hex characters, this one has {len}")]
    WrongLength {
        /// The length that was given, in bytes.
        len: usize,
    },
    /// A character is not a hex digit.
    #[error("an object id is hex, but character {position} is {found:?}")]
    NotHex {
        /// Zero-based position of the first offending character.
        position: usize,
        /// The offending character.
        found: char,
    },
    /// The id was minted by another namespace.
    #[error("this object id belongs to another namespace than {namespace:?}")]
    ForeignNamespace {
        /// The namespace the id was checked against.
        namespace: String,
    },
    /// The namespace tag matches but the check bytes do not: a mistyped or
    /// forged id.
    #[error("this object id fails its checksum for namespace {namespace:?} (mistyped?)")]
    BadChecksum {
        /// The namespace the id was checked against.
        namespace: String,
    },
}

/// A namespace of objects, usually one object class (`COUNTER`, `KV`).
///
/// ```
/// use odo_core::Namespace;
///
/// let counters = Namespace::new("COUNTER");
/// let id = counters.id_from_name("hot");
/// assert_eq!(id, counters.id_from_name("hot"));
/// assert_ne!(id, Namespace::new("KV").id_from_name("hot"));
///
/// let text = id.to_string().to_uppercase();
/// assert_eq!(counters.id_from_string(&text).unwrap(), id);
/// assert!(Namespace::new("KV").id_from_string(&text).is_err());
/// ```
#[derive(Clone)]
pub struct Namespace {
    name: String,
    tag: NamespaceTag,
    key: [u8; 32],
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.name)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

impl Namespace {
    /// The namespace called `name` (any UTF-8 string; conventionally the
    /// class name in upper case).
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let full_tag = blake3::derive_key(TAG_CONTEXT, name.as_bytes());
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&full_tag[..TAG_LEN]);
        let key = blake3::derive_key(KEY_CONTEXT, name.as_bytes());
        Self {
            name,
            tag: NamespaceTag(tag),
            key,
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tag that starts every id of this namespace.
    pub fn tag(&self) -> NamespaceTag {
        self.tag
    }

    /// The id of the object called `name` in this namespace. Deterministic.
    pub fn id_from_name(&self, name: &str) -> ObjectId {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(&[0x01]);
        hasher.update(name.as_bytes());
        let digest = hasher.finalize();
        let mut body = [0; BODY_END - TAG_LEN];
        body.copy_from_slice(&digest.as_bytes()[..BODY_END - TAG_LEN]);
        self.seal(body)
    }

    /// A new random id, distinct from every other with overwhelming
    /// probability (152 random bits).
    ///
    /// # Panics
    ///
    /// Panics if the operating system's random generator fails, which
    /// `getrandom` documents as not happening on supported platforms after
    /// boot.
    pub fn new_unique_id(&self) -> ObjectId {
        let mut body = [0; BODY_END - TAG_LEN];
        getrandom::fill(&mut body[1..]).expect("the OS random generator failed");
        body[0] = 0;
        self.seal(body)
    }

    /// Parses a user-supplied id: 64 hex characters in either case, minted by
    /// this namespace. The result prints in lower case.
    pub fn id_from_string(&self, text: &str) -> Result<ObjectId, IdError> {
        let bytes = parse_hex(text)?;
        let id = ObjectId(bytes);
        if id.namespace_tag() != self.tag {
            return Err(IdError::ForeignNamespace {
                namespace: self.name.clone(),
            });
        }
        if self.check(&bytes[..BODY_END]) != bytes[BODY_END..] {
            return Err(IdError::BadChecksum {
                namespace: self.name.clone(),
            });
        }
        Ok(id)
    }

    /// Whether `id` carries this namespace's tag.
    pub fn owns(&self, id: &ObjectId) -> bool {
        id.namespace_tag() == self.tag
    }

    fn seal(&self, body: [u8; BODY_END - TAG_LEN]) -> ObjectId {
        let mut bytes = [0; ID_LEN];
        bytes[..TAG_LEN].copy_from_slice(&self.tag.0);
        bytes[TAG_LEN..BODY_END].copy_from_slice(&body);
        let check = self.check(&bytes[..BODY_END]);
        bytes[BODY_END..].copy_from_slice(&check);
        ObjectId(bytes)
    }

    fn check(&self, prefix: &[u8]) -> [u8; ID_LEN - BODY_END] {
        let digest = blake3::keyed_hash(&self.key, prefix);
        let mut check = [0; ID_LEN - BODY_END];
        check.copy_from_slice(&digest.as_bytes()[..ID_LEN - BODY_END]);
        check
    }
}

fn parse_hex(text: &str) -> Result<[u8; ID_LEN], IdError> {
    if text.len() != HEX_LEN {
        return Err(IdError::WrongLength { len: text.len() });
    }
    let mut out = [0u8; ID_LEN];
    for (position, c) in text.chars().enumerate() {
        let nibble = c
            .to_digit(16)
            .ok_or(IdError::NotHex { position, found: c })? as u8;
        out[position / 2] |= if position % 2 == 0 {
            nibble << 4
        } else {
            nibble
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_deterministic_and_namespaced() {
        let a = Namespace::new("A");
        let b = Namespace::new("B");
        assert_eq!(a.id_from_name("x"), a.id_from_name("x"));
        assert_ne!(a.id_from_name("x"), a.id_from_name("y"));
        assert_ne!(a.id_from_name("x"), b.id_from_name("x"));
        assert!(a.owns(&a.id_from_name("x")));
        assert!(!b.owns(&a.id_from_name("x")));
    }

    #[test]
    fn derivation_is_stable() {
        // Changing the derivation moves every object's data: this must fail
        // loudly if anyone touches it.
        insta::assert_snapshot!(
            Namespace::new("COUNTER").id_from_name("hot").to_string(),
            @"9f4c629d9fa3211585bde622881e0d5d8f8b12e3c2382f76a22ce3a082369e1f"
        );
    }

    #[test]
    fn ten_thousand_unique_ids_are_distinct() {
        let ns = Namespace::new("U");
        let ids: HashSet<_> = (0..10_000).map(|_| ns.new_unique_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|id| ns.id_from_string(&id.to_string()).is_ok())
        );
    }

    #[test]
    fn display_is_64_lowercase_hex() {
        let id = Namespace::new("A").id_from_name("x").to_string();
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    }

    fn check(input: &str, expected: Result<(), IdError>) {
        let ns = Namespace::new("A");
        assert_eq!(
            ns.id_from_string(input).map(|_| ()),
            expected,
            "input {input:?}"
        );
    }

    #[test]
    fn id_from_string_cases() {
        let ns = Namespace::new("A");
        let good = ns.id_from_name("x").to_string();
        check(&good, Ok(()));
        check(&good.to_uppercase(), Ok(()));
        assert_eq!(
            ns.id_from_string(&good.to_uppercase()).unwrap().to_string(),
            good
        );
        check("", Err(IdError::WrongLength { len: 0 }));
        check(&good[..63], Err(IdError::WrongLength { len: 63 }));
        check(&format!("{good}0"), Err(IdError::WrongLength { len: 65 }));
        let mut bad = good.clone();
        bad.replace_range(10..11, "g");
        check(
            &bad,
            Err(IdError::NotHex {
                position: 10,
                found: 'g',
            }),
        );
        // 64 bytes but multi-byte characters: still not hex, never a panic.
        let wide = format!("é{}", &good[2..]);
        assert_eq!(wide.len(), 64);
        assert!(matches!(
            ns.id_from_string(&wide),
            Err(IdError::NotHex { position: 0, .. })
        ));
        let foreign = Namespace::new("B").id_from_name("x").to_string();
        check(
            &foreign,
            Err(IdError::ForeignNamespace {
                namespace: "A".into(),
            }),
        );
        let mut typo = good.clone();
        let last = if good.ends_with('0') { "1" } else { "0" };
        typo.replace_range(63..64, last);
        check(
            &typo,
            Err(IdError::BadChecksum {
                namespace: "A".into(),
            }),
        );
    }

    #[test]
    fn shards_fill_evenly() {
        let ns = Namespace::new("S");
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[ns.id_from_name(&i.to_string()).shard(4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
