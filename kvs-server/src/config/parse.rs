//! Parsing and checking the values of settings given as text.

use std::collections::BTreeMap;

use super::ConfigError;

/// Checks `--acceptor-fail-prob`: a probability per second, from 0 to 1.
pub fn check_fail_prob(prob_per_sec: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&prob_per_sec) {
        Ok(())
    } else {
        Err(ConfigError::FailProbability { got: prob_per_sec })
    }
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_members(s: &str, flag: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| ConfigError::BadMember {
            flag: flag.into(),
            entry: part.into(),
        })?;
        let id: u64 = id.trim().parse().map_err(|_| ConfigError::BadNodeId {
            flag: flag.into(),
            id: id.into(),
        })?;
        check_addr(addr.trim(), flag)?;
        if out.insert(id, addr.trim().to_string()).is_some() {
            return Err(ConfigError::DuplicateMember {
                flag: flag.into(),
                id,
            });
        }
    }
    if out.is_empty() {
        return Err(ConfigError::NoMembers { flag: flag.into() });
    }
    if out.len() > paxos_core::MEMBERS_MAX {
        return Err(ConfigError::TooManyMembers {
            flag: flag.into(),
            max: paxos_core::MEMBERS_MAX,
            got: out.len(),
        });
    }
    Ok(out)
}

/// Checks that `addr` looks like `HOST:PORT`.
pub fn check_addr(addr: &str, flag: &str) -> Result<(), ConfigError> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(ConfigError::BadAddress {
            flag: flag.into(),
            addr: addr.into(),
        }),
    }
}

/// Parses `MIN..MAX` (or a single number).
pub fn parse_range(s: &str, flag: &str) -> Result<(u64, u64), ConfigError> {
    let bad = || ConfigError::BadRange {
        flag: flag.into(),
        text: s.into(),
    };
    let (lo, hi) = match s.split_once("..") {
        Some((a, b)) => (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        ),
        None => {
            let v: u64 = s.trim().parse().map_err(|_| bad())?;
            (v, v)
        }
    };
    if lo > hi {
        return Err(ConfigError::RangeInverted {
            flag: flag.into(),
            min: lo,
            max: hi,
        });
    }
    Ok((lo, hi))
}
