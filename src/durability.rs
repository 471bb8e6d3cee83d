//! Deferred durability for downloaded model bytes: fast like `curl -o`, and still never
//! trusting bytes a power loss may have eaten.
//!
//! Waiting for the disk after every download (fsync) caps kmm at the disk's write speed: on
//! these machines 238 MB/s against 3.4 GB/s into the page cache, so a 2 GiB model took twice as
//! long as with curl. A killed process loses nothing the kernel already has, so only a crash of
//! the whole machine can lose those bytes, and a crash means a new boot. So:
//!
//! 1. Before an apply writes downloaded bytes, the content hashes it is about to write are
//!    recorded, durably, in `models/.kmm/unsynced.json` with the id of the running boot
//!    ([`record`]; one small fsynced write per apply). Downloads are then renamed into place
//!    without an fsync.
//! 2. A later plan in another boot hashes every installed file and store download whose hash
//!    the journal names ([`unconfirmed`]), as `--verify` would, and the plan replaces what the
//!    crash damaged; apply re-hashes such a download before installing it.
//! 3. After a successful apply (by `apply`, `download`, `watch`, `ensure`, `gc` or the library's
//!    `download_snapshot`), [`settle`] drops what needs no more care: entries of this boot
//!    older than [`SETTLED_AFTER`] (the kernel writes dirty pages back within ~30 s; their
//!    files are fsynced first, which by then costs next to nothing), entries of other boots
//!    whose files the apply's own plan hashed, and hashes no file holds any more.
//!
//! Where no boot id can be read (not Linux), [`record`] says so and downloads are fsynced
//! before their rename as before.
//!
//! Edges: reads and writes only the journal; reads the registry to find the files to fsync.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::desired::recorded_install_dir;
use crate::error::Result;
use crate::registry::Registry;
use crate::store::StorePaths;

/// Entries of the running boot at least this old are settled (fsynced, then dropped).
pub const SETTLED_AFTER: Duration = Duration::from_secs(120);

const FORMAT_VERSION: u32 = 1;

/// `models/.kmm/unsynced.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Journal {
    version: u32,
    /// Content hash (hex) -> boot id -> when (seconds since the Unix epoch) bytes with that hash
    /// were last written in that boot. One hash can have bytes from several boots: a download
    /// of this boot must not hide that an older copy is still unchecked.
    entries: BTreeMap<String, BTreeMap<String, u64>>,
}

fn journal_file(paths: &StorePaths) -> PathBuf {
    paths.kmm_dir().join("unsynced.json")
}

/// The id of the running boot; `None` where the system does not tell.
pub fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The journal, or an empty one when there is none. A journal kmm cannot read (written by a
/// newer kmm, or edited by hand) is reported and read as empty: it guards against a rare crash,
/// and refusing to work over it would help nobody.
fn load(paths: &StorePaths) -> Journal {
    let file = journal_file(paths);
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Journal::default();
    };
    match serde_json::from_str::<Journal>(&text) {
        Ok(journal) if journal.version == FORMAT_VERSION => journal,
        _ => {
            tracing::warn!(
                "ignoring `{}`: not a journal this kmm reads",
                file.display()
            );
            Journal::default()
        }
    }
}

fn save(paths: &StorePaths, journal: &Journal) -> Result<()> {
    let file = journal_file(paths);
    if journal.entries.is_empty() {
        return match std::fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(crate::error::Error::io(
                format!("removing `{}`", file.display()),
                &error,
            )),
        };
    }
    let mut text = serde_json::to_string_pretty(journal).expect("the journal serializes");
    text.push('\n');
    crate::atomic_file::write(&file, text.as_bytes(), "the durability journal")
}

/// Records, durably, that bytes with these content hashes are about to be written without an
/// fsync. Returns `false` when the boot id is unknown: the caller must then fsync each file
/// before its rename. Nothing to record is `true` and writes nothing.
pub fn record<'a>(paths: &StorePaths, hashes: impl IntoIterator<Item = &'a str>) -> Result<bool> {
    let Some(boot) = boot_id() else {
        return Ok(false);
    };
    let mut journal = load(paths);
    let before = journal.clone();
    let written_at = now_secs();
    for hash in hashes {
        journal
            .entries
            .entry(hash.to_string())
            .or_default()
            .insert(boot.clone(), written_at);
    }
    if journal != before {
        journal.version = FORMAT_VERSION;
        fs_err::create_dir_all(paths.kmm_dir())
            .map_err(|e| crate::error::Error::io("creating the .kmm folder", &e))?;
        save(paths, &journal)?;
    }
    Ok(true)
}

/// Hashes whose bytes were written in another boot and never confirmed on disk: the machine
/// may have crashed before they reached it, so files with these hashes must be hashed before
/// they are trusted.
pub fn unconfirmed(paths: &StorePaths) -> BTreeSet<String> {
    let journal = load(paths);
    if journal.entries.is_empty() {
        return BTreeSet::new();
    }
    let boot = boot_id();
    journal
        .entries
        .into_iter()
        .filter(|(_, boots)| boots.keys().any(|written| Some(written) != boot.as_ref()))
        .map(|(hash, _)| hash)
        .collect()
}

/// The content hashes of `desired`'s files: a plan for these models hashed those of them that
/// were unconfirmed, so [`settle`] may drop their entries of other boots.
pub fn hashes_of(desired: &[crate::desired::DesiredModel]) -> BTreeSet<String> {
    desired
        .iter()
        .flat_map(|model| model.files.iter().map(|file| file.hash.hex().to_string()))
        .collect()
}

/// After a successful apply (under the store lock): fsyncs and drops this boot's entries older
/// than [`SETTLED_AFTER`], drops other boots' entries of the `checked` hashes (those of the
/// models the apply planned in this run: its plan hashed their files), and drops hashes no
/// installed file or store download holds.
pub fn settle(paths: &StorePaths, checked: &BTreeSet<String>) -> Result<()> {
    let mut journal = load(paths);
    if journal.entries.is_empty() {
        return Ok(());
    }
    let before = journal.clone();
    let registry = Registry::load(&paths.registry_file())?;
    let holders = holders_of(paths, &registry, &journal);
    let boot = boot_id();
    let now = now_secs();
    journal.entries.retain(|hash, boots| {
        let Some(files) = holders.get(hash) else {
            return false;
        };
        boots.retain(|written_in, written_at| {
            if Some(written_in) != boot.as_ref() {
                return !checked.contains(hash);
            }
            if now.saturating_sub(*written_at) < SETTLED_AFTER.as_secs() {
                return true;
            }
            // Old enough that the kernel has written it back: the fsync confirms it cheaply.
            // Any failure keeps the entry for the next run.
            !files.iter().all(|file| {
                std::fs::File::open(file)
                    .and_then(|handle| handle.sync_all())
                    .is_ok()
            })
        });
        !boots.is_empty()
    });
    if journal != before {
        save(paths, &journal)?;
    }
    Ok(())
}

/// The files (absolute) that hold each journal hash: installed files the registry records with
/// it and the store download named by it.
fn holders_of(
    paths: &StorePaths,
    registry: &Registry,
    journal: &Journal,
) -> BTreeMap<String, Vec<PathBuf>> {
    let mut holders: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for hash in journal.entries.keys() {
        let download = paths.downloads_dir().join(hash);
        if download.is_file() {
            holders.entry(hash.clone()).or_default().push(download);
        }
    }
    for record in registry.models.values() {
        let Some(dir) = recorded_install_dir(paths.root(), record) else {
            continue;
        };
        for file in &record.files {
            let hash = file.sha256.as_ref().or(file.git_sha1.as_ref());
            if let Some(hash) = hash.filter(|hash| journal.entries.contains_key(*hash)) {
                let path = paths.root().join(&dir).join(&file.path);
                if path.is_file() {
                    holders.entry(hash.clone()).or_default().push(path);
                }
            }
        }
    }
    holders
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_of(paths: &StorePaths) -> Journal {
        load(paths)
    }

    fn age_entries(paths: &StorePaths, boot: Option<&str>, seconds: u64) {
        let mut journal = journal_of(paths);
        for boots in journal.entries.values_mut() {
            *boots = std::mem::take(boots)
                .into_iter()
                .map(|(written_in, at)| (boot.map_or(written_in, str::to_string), at - seconds))
                .collect();
        }
        save(paths, &journal).unwrap();
    }

    #[test]
    fn entries_of_another_boot_are_unconfirmed_until_a_whole_plan_checked_them() {
        if boot_id().is_none() {
            return; // nothing is deferred where the boot id is unknown
        }
        let dir = tempfile::tempdir().unwrap();
        let paths = StorePaths::new(dir.path());
        fs_err::create_dir_all(paths.downloads_dir()).unwrap();
        std::fs::write(paths.downloads_dir().join("aa"), b"bytes").unwrap();
        assert!(record(&paths, ["aa"]).unwrap());
        assert!(unconfirmed(&paths).is_empty(), "this boot's bytes are safe");

        age_entries(&paths, Some("an-earlier-boot"), 0);
        assert_eq!(unconfirmed(&paths), BTreeSet::from(["aa".to_string()]));
        settle(&paths, &BTreeSet::from(["bb".to_string()])).unwrap();
        assert_eq!(
            unconfirmed(&paths).len(),
            1,
            "an apply of other models checked nothing"
        );
        settle(&paths, &BTreeSet::from(["aa".to_string()])).unwrap();
        assert!(unconfirmed(&paths).is_empty());
        assert!(
            !journal_file(&paths).exists(),
            "an empty journal is removed"
        );
    }

    #[test]
    fn this_boots_entries_settle_once_old_and_vanished_hashes_go() {
        if boot_id().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let paths = StorePaths::new(dir.path());
        fs_err::create_dir_all(paths.downloads_dir()).unwrap();
        std::fs::write(paths.downloads_dir().join("aa"), b"bytes").unwrap();
        record(&paths, ["aa", "gone"]).unwrap();

        settle(&paths, &BTreeSet::from(["aa".to_string()])).unwrap();
        let left: Vec<String> = journal_of(&paths).entries.into_keys().collect();
        assert_eq!(
            left,
            ["aa"],
            "young entries stay; a hash no file holds goes"
        );

        age_entries(&paths, None, SETTLED_AFTER.as_secs());
        settle(&paths, &BTreeSet::new()).unwrap();
        assert!(journal_of(&paths).entries.is_empty());
    }

    #[test]
    fn an_unreadable_journal_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StorePaths::new(dir.path());
        fs_err::create_dir_all(paths.kmm_dir()).unwrap();
        std::fs::write(journal_file(&paths), b"{ not json").unwrap();
        assert!(unconfirmed(&paths).is_empty());
    }
}
