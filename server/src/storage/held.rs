//! Held writes: a shard's committed writes set aside outside the commit
//! log while its store refuses them, so the log can still be trimmed.
//!
//! A shard whose applies keep failing would otherwise pin the log's trim
//! floor at its applied revision: the other shards' writes would keep the
//! log growing until the disk is full, and one failed shard would take
//! every shard down. So the applier writes the shard's pending states (at
//! most the memtable's bound) to `log/held-NNNN.wal`, one record per frame
//! with its own revision, in the log's frame format, synced; from then on
//! the shard no longer holds the trim floor. The shard refuses writes
//! until its store has taken every held state, and the file is deleted
//! once it has. Recovery replays held frames together with the log's
//! (a key's highest revision wins), then deletes the files.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::log::{self, Frame, LogRecord, LOG_DIR};
use super::manifest;
use super::memtable::Pending;
use super::StoreError;

const PREFIX: &str = "held-";
const SUFFIX: &str = ".wal";

/// Whether a log directory entry is a held-writes file.
pub fn is_held_file(name: &str) -> bool {
    name.starts_with(PREFIX) && name.ends_with(SUFFIX)
}

fn path(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir
        .join(LOG_DIR)
        .join(format!("{PREFIX}{shard:04}{SUFFIX}"))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(format!("{}: {e}", path.display()))
}

/// Writes `pending` (a shard's every unapplied state) durably as the
/// shard's held file, replacing any earlier one.
pub fn write(
    data_dir: &Path,
    shard: usize,
    pending: &[(String, Pending)],
) -> Result<(), StoreError> {
    let mut buf = Vec::new();
    for (key, state) in pending {
        let record = LogRecord {
            key: key.clone(),
            value: state.value.as_ref().map(|v| v.json.clone()),
            expires_at: state.value.as_ref().and_then(|v| v.expires_at),
        };
        log::encode_frame(
            &mut buf,
            state.revision,
            &[(shard as u16, &[record][..])],
            false,
            true,
        )?;
    }
    let target = path(data_dir, shard);
    let temp = target.with_extension("tmp");
    let written = File::create(&temp)
        .and_then(|mut f| f.write_all(&buf).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&temp, &target));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(io(&target)(e));
    }
    manifest::sync_dir(&data_dir.join(LOG_DIR))
}

/// Deletes the shard's held file, once its store has every state in it.
pub fn remove(data_dir: &Path, shard: usize) -> Result<(), StoreError> {
    let target = path(data_dir, shard);
    match std::fs::remove_file(&target) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&target)(e)),
        _ => {}
    }
    manifest::sync_dir(&data_dir.join(LOG_DIR))
}

/// The frames of every held file in the log directory `dir`, and the
/// files. A held file is written whole before it is renamed into place,
/// so a frame that does not decode is damage, not a torn write.
pub fn read_all(dir: &Path) -> Result<(Vec<Frame>, Vec<PathBuf>), StoreError> {
    let mut frames = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !is_held_file(name) {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let mut at = 0;
        while at < bytes.len() {
            let Some((decoded, len)) = log::decode_frame(&bytes[at..]) else {
                return Err(StoreError::Corrupt(format!(
                    "{}: damaged at byte {at}",
                    path.display()
                )));
            };
            frames.extend(decoded);
            at += len;
        }
        files.push(path);
    }
    Ok((frames, files))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::store::StoredValue;
    use std::sync::Arc;

    #[test]
    fn held_states_read_back_with_their_revisions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(LOG_DIR)).unwrap();
        let value = |v: u64| {
            Some(Arc::new(StoredValue::lasting(
                v,
                bytes::Bytes::from_static(b"1"),
            )))
        };
        let pending = vec![
            (
                "a".to_owned(),
                Pending {
                    revision: 9,
                    value: value(9),
                    not_in_store: false,
                },
            ),
            (
                "b".to_owned(),
                Pending {
                    revision: 4,
                    value: None,
                    not_in_store: false,
                },
            ),
        ];
        write(dir.path(), 3, &pending).unwrap();
        let (frames, files) = read_all(&dir.path().join(LOG_DIR)).unwrap();
        assert_eq!(files.len(), 1);
        let got: Vec<(u64, u16, &str, bool)> = frames
            .iter()
            .map(|f| {
                (
                    f.first_revision,
                    f.shard,
                    f.records[0].key.as_str(),
                    f.records[0].value.is_some(),
                )
            })
            .collect();
        assert_eq!(got, [(9, 3, "a", true), (4, 3, "b", false)]);
        remove(dir.path(), 3).unwrap();
        assert!(read_all(&dir.path().join(LOG_DIR)).unwrap().0.is_empty());
    }

    /// A held file is durable once written: it survives a power cut (its
    /// temporary file, rename and directory sync all counted).
    #[test]
    fn held_states_survive_power_loss() {
        let (_root, fs, mnt) = exdaas_tests::powerfs::PowerFs::mount_temp().unwrap();
        let data = mnt.join("data");
        crate::storage::manifest::create_dir_durably(&data.join(LOG_DIR)).unwrap();
        let pending = vec![(
            "k".to_owned(),
            Pending {
                revision: 7,
                value: None,
                not_in_store: false,
            },
        )];
        write(&data, 0, &pending).unwrap();
        fs.power_loss();
        let (frames, files) = read_all(&data.join(LOG_DIR)).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(
            (frames[0].first_revision, frames[0].records[0].key.as_str()),
            (7, "k")
        );
    }
}
