//! The cluster's keys in etcd, all under `/odo/<cluster name>/`:
//!
//! | key | value | lease |
//! | --- | --- | --- |
//! | `config/shards` | the shard count (decimal), written once by the first host | none |
//! | `config/token` | the transport token hosts present to each other, written once | none |
//! | `members/<host>` | [`Member`] (JSON): where the host is, whether it drains | the host's |
//! | `election` | the election (etcd's election API): its leader assigns shards | the leader's |
//! | `assign/<shard>` | the host the shard should go to (written by the leader) | none |
//! | `owners/<shard>` | [`Owner`] (JSON): the host serving the shard | the owner's |
//!
//! A shard's **epoch** is the `create_revision` of its owner key: the etcd
//! revision at which the owner acquired it. It only grows, so it fences a
//! holder that lost its lease (PostgreSQL refuses its commits).

use serde::{Deserialize, Serialize};

/// A member's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The host's id.
    pub host: String,
    /// Where other hosts reach its objects (`tcp:IP:PORT`).
    pub endpoint: String,
    /// Its HTTP front door.
    pub http: String,
    /// Whether it is leaving (gives its shards away, takes none).
    pub draining: bool,
}

/// An owner key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The host serving the shard.
    pub host: String,
    /// Where other hosts reach it (`tcp:IP:PORT`).
    pub endpoint: String,
}

/// The keys of one cluster.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    root: String,
}

impl Keys {
    pub(crate) fn new(cluster: &str) -> Self {
        Self {
            root: format!("/odo/{cluster}/"),
        }
    }

    pub(crate) fn root(&self) -> String {
        self.root.clone()
    }

    pub(crate) fn shards(&self) -> String {
        format!("{}config/shards", self.root)
    }

    pub(crate) fn token(&self) -> String {
        format!("{}config/token", self.root)
    }

    pub(crate) fn members(&self) -> String {
        format!("{}members/", self.root)
    }

    pub(crate) fn member(&self, host: &str) -> String {
        format!("{}{host}", self.members())
    }

    pub(crate) fn election(&self) -> String {
        format!("{}election", self.root)
    }

    pub(crate) fn assigns(&self) -> String {
        format!("{}assign/", self.root)
    }

    pub(crate) fn assign(&self, shard: u32) -> String {
        format!("{}{shard}", self.assigns())
    }

    pub(crate) fn owners(&self) -> String {
        format!("{}owners/", self.root)
    }

    pub(crate) fn owner(&self, shard: u32) -> String {
        format!("{}{shard}", self.owners())
    }

    /// The shard number at the end of `key` under `prefix`.
    pub(crate) fn shard_of(prefix: &str, key: &[u8]) -> Option<u32> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(prefix)?
            .parse()
            .ok()
    }

    /// The host id at the end of a member key.
    pub(crate) fn host_of<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(self.members().as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let keys = Keys::new("prod");
        assert_eq!(keys.owner(7), "/odo/prod/owners/7");
        assert_eq!(
            Keys::shard_of(&keys.owners(), keys.owner(7).as_bytes()),
            Some(7)
        );
        assert_eq!(Keys::shard_of(&keys.owners(), b"/odo/prod/owners/x"), None);
        assert_eq!(keys.host_of(keys.member("h1").as_bytes()), Some("h1"));
    }
}
