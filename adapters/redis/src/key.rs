//! Key names, and how they map to Redis Cluster slots.
//!
//! A quota named `api` with the prefix `tenlives` lives in the key
//! `tenlives:{api}:rate`. Redis Cluster hashes only the part between the
//! first `{` and the next `}` (the hash tag) when there is one, so the slot
//! is `CRC16(name) mod 16384` (CRC-16/XMODEM, the cluster specification's),
//! whatever the prefix and suffix: every key of one quota lands on one slot,
//! and a script touching them is a single-slot script. Names and prefixes
//! may not contain braces, so the tag is always exactly the name.

use std::fmt;

/// The number of hash slots of a Redis Cluster.
pub const CLUSTER_SLOTS: u16 = 16_384;

/// A quota's name was empty or held a brace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadName {
    /// The name (or prefix) refused.
    pub name: String,
}

impl fmt::Display for BadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "quota name or prefix {:?} is empty or contains '{{' or '}}'",
            self.name
        )
    }
}

impl std::error::Error for BadName {}

fn check(part: &str) -> Result<(), BadName> {
    if part.is_empty() || part.contains(['{', '}']) {
        Err(BadName {
            name: part.to_owned(),
        })
    } else {
        Ok(())
    }
}

/// The key of the rate quota `name` under `prefix`: `prefix:{name}:rate`.
///
/// # Errors
///
/// [`BadName`] when either is empty or contains a brace.
pub fn rate_key(prefix: &str, name: &str) -> Result<String, BadName> {
    check(prefix)?;
    check(name)?;
    Ok(format!("{prefix}:{{{name}}}:rate"))
}

/// The keys of the semaphore `name` under `prefix`: the holders hash
/// `prefix:{name}:sem` and the lapse sorted set `prefix:{name}:sem:ttl`
/// (one hash tag, so one slot).
///
/// # Errors
///
/// [`BadName`] when either is empty or contains a brace.
pub fn semaphore_keys(prefix: &str, name: &str) -> Result<[String; 2], BadName> {
    check(prefix)?;
    check(name)?;
    Ok([
        format!("{prefix}:{{{name}}}:sem"),
        format!("{prefix}:{{{name}}}:sem:ttl"),
    ])
}

/// The key of `key`'s quota in the keyed quota family `name` under
/// `prefix`: `prefix:{name:key}:rate`, with `%`, `{` and `}` in `key`
/// written `%25`, `%7B` and `%7D` (so distinct keys make distinct names and
/// the tag always closes where the name's does). The hash tag is
/// `name:key`: each key of the family lands on the slot `CRC16(name:key)
/// mod 16384` (escaped), so the family spreads over the cluster, and a
/// script for one key touches one slot.
///
/// # Errors
///
/// [`BadName`] when `prefix` or `name` is empty or contains a brace (any
/// `key` is accepted).
pub fn keyed_rate_key(prefix: &str, name: &str, key: &str) -> Result<String, BadName> {
    check(prefix)?;
    check(name)?;
    let mut out = String::with_capacity(prefix.len() + name.len() + key.len() + 10);
    out.push_str(prefix);
    out.push_str(":{");
    out.push_str(name);
    out.push(':');
    for c in key.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out.push_str("}:rate");
    Ok(out)
}

/// The cluster slot of `key`: CRC-16/XMODEM of its hash tag (or of the whole
/// key when it has none) modulo [`CLUSTER_SLOTS`], as the cluster
/// specification defines it.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&c| c == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&c| c == b'}')?;
        // An empty tag `{}` does not count: the whole key is hashed.
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % CLUSTER_SLOTS
}

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0, no reflection).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_cluster_specification_vector() {
        // The cluster specification's test vector: "123456789" -> 0x31C3.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"123456789"), 0x31C3 % CLUSTER_SLOTS);
    }

    #[test]
    fn a_quota_key_hashes_by_its_name_only() {
        let key = rate_key("tenlives", "api").unwrap();
        assert_eq!(key, "tenlives:{api}:rate");
        assert_eq!(key_slot(key.as_bytes()), key_slot(b"api"));
        assert_eq!(
            key_slot(rate_key("other", "api").unwrap().as_bytes()),
            key_slot(b"api")
        );
        for key in semaphore_keys("tenlives", "api").unwrap() {
            assert_eq!(key_slot(key.as_bytes()), key_slot(b"api"));
        }
        // An empty tag hashes the whole key.
        assert_eq!(key_slot(b"a{}b"), crc16(b"a{}b") % CLUSTER_SLOTS);
    }

    #[test]
    fn keyed_quota_keys_hash_by_name_and_escaped_key() {
        let k = keyed_rate_key("tenlives", "api", "user-42").unwrap();
        assert_eq!(k, "tenlives:{api:user-42}:rate");
        assert_eq!(key_slot(k.as_bytes()), key_slot(b"api:user-42"));
        // Braces in a key are escaped: the tag still closes after the key.
        let k = keyed_rate_key("tenlives", "api", "a}b{c%").unwrap();
        assert_eq!(k, "tenlives:{api:a%7Db%7Bc%25}:rate");
        assert_eq!(key_slot(k.as_bytes()), key_slot(b"api:a%7Db%7Bc%25"));
        // Escaping is injective: a key spelling an escape differs.
        assert_ne!(
            keyed_rate_key("t", "n", "%7D").unwrap(),
            keyed_rate_key("t", "n", "}").unwrap()
        );
        // Different keys usually land on different slots.
        let slots: std::collections::HashSet<u16> = (0..64)
            .map(|i| {
                key_slot(
                    keyed_rate_key("t", "api", &i.to_string())
                        .unwrap()
                        .as_bytes(),
                )
            })
            .collect();
        assert!(slots.len() > 32, "{}", slots.len());
        assert!(keyed_rate_key("t{", "api", "x").is_err());
    }

    #[test]
    fn braces_and_empty_names_are_refused() {
        assert!(rate_key("tenlives", "a}b").is_err());
        assert!(rate_key("ten{lives", "a").is_err());
        assert!(rate_key("tenlives", "").is_err());
    }
}
