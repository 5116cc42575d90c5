//! Which shard owns a key.
//!
//! The placement function is part of the on-disk format: a data directory
//! written by one version must be readable by the next, so this is a fixed,
//! documented algorithm (64-bit FNV-1a over the key's UTF-8 bytes, reduced
//! modulo the shard count), never a std `Hasher` whose output may change
//! between Rust releases. The manifest records its name.
//!
//! Two placements exist. Directories made before hash tags hash the whole
//! key (`fnv1a-64`) and keep doing so; new ones (and any `exdaas reshard`
//! or restore writes) hash only a key's hash tag when it has one
//! (`fnv1a-64-hashtag`): the part inside the first `{...}` with something
//! in it, as in Redis Cluster, so `{user42}/profile` and `{user42}/cart`
//! share a shard (and, behind `config/cluster/nginx.conf`, a node).

/// How keys map to shards, as the manifest names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The whole key is hashed (directories made before hash tags).
    WholeKey,
    /// Only the key's hash tag is hashed, when it has one.
    HashTag,
}

impl Placement {
    /// What new directories use.
    pub const NEW: Placement = Placement::HashTag;

    /// The name the manifest records.
    pub fn name(self) -> &'static str {
        match self {
            Placement::WholeKey => "fnv1a-64",
            Placement::HashTag => "fnv1a-64-hashtag",
        }
    }

    /// The placement a manifest names, if this build knows it.
    pub fn named(name: &str) -> Option<Placement> {
        [Placement::WholeKey, Placement::HashTag]
            .into_iter()
            .find(|p| p.name() == name)
    }

    /// The placement hash of `key`.
    pub fn hash(self, key: &str) -> KeyHash {
        match self {
            Placement::WholeKey => KeyHash::of(key),
            Placement::HashTag => KeyHash::of(hash_tag(key)),
        }
    }
}

/// The part of `key` that places it: inside the first `{` and the first
/// `}` after it, when that is not empty; else the whole key.
pub fn hash_tag(key: &str) -> &str {
    let Some(open) = key.find('{') else {
        return key;
    };
    let rest = &key[open + 1..];
    match rest.find('}') {
        Some(close) if close > 0 => &rest[..close],
        _ => key,
    }
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The shard (0-based) that stores `key` when there are `shards` shards.
pub fn shard_for(key: &str, shards: usize) -> usize {
    KeyHash::of(key).shard(shards)
}

/// A key's placement hash, computed once per request and carried down the
/// write path (key lock stripe, the read of its old value, the write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(u64);

impl KeyHash {
    /// The hash of `key`.
    pub fn of(key: &str) -> Self {
        Self(fnv1a_64(key.as_bytes()))
    }

    /// The key's shard among `shards`.
    pub fn shard(self, shards: usize) -> usize {
        debug_assert!(shards > 0, "shard count is validated at start");
        (self.0 % shards.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_redis_cluster() {
        assert_eq!(hash_tag("{user42}/profile"), "user42");
        assert_eq!(hash_tag("cart/{user42}"), "user42");
        assert_eq!(hash_tag("a{b}{c}"), "b");
        assert_eq!(hash_tag("a{}b{c}"), "a{}b{c}");
        assert_eq!(hash_tag("a{b"), "a{b");
        assert_eq!(hash_tag("plain"), "plain");
        let p = Placement::HashTag;
        assert_eq!(p.hash("{u}/a"), p.hash("{u}/b"));
        assert_eq!(Placement::WholeKey.hash("{u}/a"), KeyHash::of("{u}/a"));
        for placement in [Placement::WholeKey, Placement::HashTag] {
            assert_eq!(Placement::named(placement.name()), Some(placement));
        }
    }

    #[test]
    fn matches_published_fnv1a_vectors() {
        // Reference values from the FNV specification's test suite.
        assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn placement_is_stable_across_versions() {
        // Pinned: changing any of these strands keys in existing data dirs.
        assert_eq!(shard_for("1", 4), (0xaf63ac4c86019afcu64 % 4) as usize);
        let spread: Vec<usize> = (0..1000).map(|i| shard_for(&i.to_string(), 4)).collect();
        for s in 0..4 {
            let n = spread.iter().filter(|&&x| x == s).count();
            assert!(n > 150, "shard {s} got only {n} of 1000 keys");
        }
    }
}
