//! What a snapshot says it is: the cluster, shard (Raft group) and group epoch it was
//! built in, and where in the log it ends. The name is openraft's `snapshot_id` (so it
//! travels with every install and is the snapshot file's name) and is written inside
//! the file's checksummed header too.
//!
//! `<cluster>.s<shard>.e<epoch>.t<term>.i<index>.n<sequence>`, e.g.
//! `trail.s3.e1.t5.i20412.n2`. Cluster ids may contain dots, so the name is read from
//! the right.
//!
//! The epoch is the group's incarnation: 0 for a single node's shards and for the
//! metadata group (formed from `--peers`), the cluster map's epoch for a data shard of
//! a cluster. A receiver refuses a snapshot of another cluster or group, one of an
//! earlier epoch than its own (built by a replica of an older incarnation of the
//! group), and one that ends before what it has applied (installing it would roll the
//! state back).

use std::fmt;
use std::str::FromStr;

use crate::consensus::LogId;
use crate::ledger::routing::ShardId;

/// Who builds or receives snapshots: the replica's cluster, group and epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotStamp {
    pub cluster: String,
    pub shard: ShardId,
    pub epoch: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotName {
    pub stamp: SnapshotStamp,
    pub term: u64,
    pub index: u64,
    /// Snapshots built by this replica since it started (two builds at the same log id
    /// get different names).
    pub sequence: u64,
}

impl SnapshotName {
    pub fn new(stamp: &SnapshotStamp, last_log_id: Option<LogId>, sequence: u64) -> Self {
        SnapshotName {
            stamp: stamp.clone(),
            term: last_log_id.map_or(0, |id| id.leader_id.term),
            index: last_log_id.map_or(0, |id| id.index),
            sequence,
        }
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.s{}.e{}.t{}.i{}.n{}",
            self.stamp.cluster,
            self.stamp.shard,
            self.stamp.epoch,
            self.term,
            self.index,
            self.sequence
        )
    }
}

impl FromStr for SnapshotName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let malformed = || {
            format!(
                "snapshot name {name:?} is not <cluster>.s<shard>.e<epoch>.t<term>.i<index>.n<seq> \
                 (built by an older Trail?)"
            )
        };
        let mut parts = name.rsplitn(6, '.');
        let mut number = |prefix: char| -> Result<u64, String> {
            parts
                .next()
                .and_then(|part| part.strip_prefix(prefix))
                .and_then(|digits| digits.parse().ok())
                .ok_or_else(malformed)
        };
        let sequence = number('n')?;
        let index = number('i')?;
        let term = number('t')?;
        let epoch = number('e')?;
        let shard = ShardId::try_from(number('s')?).map_err(|_| malformed())?;
        let cluster = parts
            .next()
            .filter(|cluster| !cluster.is_empty())
            .ok_or_else(malformed)?;
        Ok(SnapshotName {
            stamp: SnapshotStamp {
                cluster: cluster.to_string(),
                shard,
                epoch,
            },
            term,
            index,
            sequence,
        })
    }
}

/// Whether a replica stamped `own`, having applied up to `applied`, may install the
/// snapshot named `name` that ends at `last_log_id`. The error says why not.
pub fn check_install(
    own: &SnapshotStamp,
    applied: Option<LogId>,
    name: &str,
    last_log_id: Option<LogId>,
) -> Result<(), String> {
    let theirs: SnapshotName = name.parse()?;
    let theirs_stamp = &theirs.stamp;
    if theirs_stamp.cluster != own.cluster {
        return Err(format!(
            "snapshot {name} was built in cluster {:?}, this replica is in {:?}",
            theirs_stamp.cluster, own.cluster
        ));
    }
    if theirs_stamp.shard != own.shard {
        return Err(format!(
            "snapshot {name} was not built from shard {}",
            own.shard
        ));
    }
    if theirs_stamp.epoch < own.epoch {
        return Err(format!(
            "snapshot {name} is stale: built in epoch {} of shard {}, this replica is in epoch {}",
            theirs_stamp.epoch, own.shard, own.epoch
        ));
    }
    if theirs.index != last_log_id.map_or(0, |id| id.index)
        || theirs.term != last_log_id.map_or(0, |id| id.leader_id.term)
    {
        return Err(format!(
            "snapshot {name} does not match its last log id {last_log_id:?}"
        ));
    }
    if last_log_id < applied {
        return Err(format!(
            "snapshot {name} is stale: it ends at {last_log_id:?}, before what this replica \
             has applied ({applied:?})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log_id(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn stamp(cluster: &str, shard: ShardId, epoch: u64) -> SnapshotStamp {
        SnapshotStamp {
            cluster: cluster.to_string(),
            shard,
            epoch,
        }
    }

    #[test]
    fn names_round_trip_with_dots_in_the_cluster_id() {
        let name = SnapshotName::new(&stamp("prod.eu-1", 12, 3), log_id(5, 20412), 2);
        let text = name.to_string();
        assert_eq!(text, "prod.eu-1.s12.e3.t5.i20412.n2");
        assert_eq!(text.parse::<SnapshotName>().unwrap(), name);
        let empty = SnapshotName::new(&stamp("trail", 0, 0), None, 0);
        assert_eq!(empty.to_string(), "trail.s0.e0.t0.i0.n0");
    }

    #[test]
    fn malformed_and_legacy_names_are_refused() {
        for bad in [
            "s2-5-100-1",
            "",
            ".s1.e0.t1.i1.n1",
            "trail.s1.e0.t1.i1",
            "trail.s1.eX.t1.i1.n1",
            "trail.s99999999999.e0.t1.i1.n1",
        ] {
            let error = bad.parse::<SnapshotName>().unwrap_err();
            assert!(error.contains("is not <cluster>"), "{bad}: {error}");
        }
    }

    #[test]
    fn installs_are_refused_across_clusters_groups_epochs_and_rollbacks() {
        let own = stamp("trail", 3, 2);
        let name = |cluster: &str, shard, epoch, term, index| {
            SnapshotName::new(&stamp(cluster, shard, epoch), log_id(term, index), 1).to_string()
        };
        let check =
            |name: &str, last: Option<LogId>, applied| check_install(&own, applied, name, last);
        check(&name("trail", 3, 2, 4, 100), log_id(4, 100), log_id(4, 50)).unwrap();
        // A later epoch is this replica being behind on the map: accepted.
        check(&name("trail", 3, 5, 4, 100), log_id(4, 100), None).unwrap();
        let refused = [
            (
                name("other", 3, 2, 4, 100),
                log_id(4, 100),
                None,
                "cluster \"other\"",
            ),
            (
                name("trail", 4, 2, 4, 100),
                log_id(4, 100),
                None,
                "not built from shard 3",
            ),
            (
                name("trail", 3, 1, 4, 100),
                log_id(4, 100),
                None,
                "stale: built in epoch 1",
            ),
            (
                name("trail", 3, 2, 4, 100),
                log_id(4, 99),
                None,
                "does not match",
            ),
            (
                name("trail", 3, 2, 4, 100),
                log_id(4, 100),
                log_id(4, 101),
                "stale: it ends",
            ),
        ];
        for (name, last, applied, reason) in refused {
            let error = check(&name, last, applied).unwrap_err();
            assert!(error.contains(reason), "{name}: {error}");
        }
    }
}
