//! One entry's checks, whatever the format, and the normalized archive they
//! go into.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::{ArchiveError, Limits, Normalized, Refused};

/// A path inside the archive's directory: components that are neither
/// empty, `.` nor `..`, joined by `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelativePath(Vec<String>);

impl RelativePath {
    /// Resolves `name` (as the archive wrote it) inside the tree: `./` and
    /// `.` dropped, `..` taken back lexically, refused when it would climb
    /// above the top or is absolute.
    pub fn parse(name: &[u8], limit: usize) -> Result<RelativePath, Refused> {
        let shown = String::from_utf8_lossy(name).into_owned();
        let text = std::str::from_utf8(name).map_err(|_| Refused::BadName {
            entry: shown.clone(),
        })?;
        if text.len() > limit {
            return Err(Refused::PathTooLong {
                entry: shown,
                limit,
            });
        }
        if text.chars().any(|c| c.is_control() || c == '\\') {
            return Err(Refused::BadName { entry: shown });
        }
        if text.starts_with('/') || has_drive(text) {
            return Err(Refused::Absolute { entry: shown });
        }
        let mut parts: Vec<String> = Vec::new();
        for part in text.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(Refused::Escapes { entry: shown });
                    }
                }
                other => parts.push(other.to_owned()),
            }
        }
        if parts.is_empty() {
            return Err(Refused::BadName { entry: shown });
        }
        Ok(RelativePath(parts))
    }

    /// Where a link at `self` pointing at `target` lands, if inside, and
    /// the paths the walk there passes through (each step but the last),
    /// which must not be links themselves: `x/l -> ..` and `y -> x/l/..`
    /// each stay inside on paper, but the second climbs out through the
    /// first.
    fn resolve_link(&self, target: &str) -> Option<(RelativePath, Vec<RelativePath>)> {
        if target.is_empty() || target.starts_with('/') || has_drive(target) {
            return None;
        }
        let mut parts: Vec<String> = self.0[..self.0.len() - 1].to_vec();
        let mut passed = Vec::new();
        for part in target.split('/') {
            if part.is_empty() || part == "." {
                continue;
            }
            // Every step starts from where the last one ended.
            if !parts.is_empty() {
                passed.push(RelativePath(parts.clone()));
            }
            if part == ".." {
                parts.pop()?;
            } else {
                parts.push(part.to_owned());
            }
        }
        Some((RelativePath(parts), passed))
    }

    fn ancestors(&self) -> impl Iterator<Item = RelativePath> + '_ {
        (1..self.0.len()).map(|n| RelativePath(self.0[..n].to_vec()))
    }

    pub fn as_string(&self) -> String {
        self.0.join("/")
    }
}

/// `C:` and the like: absolute on Windows, where some zips are made.
fn has_drive(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':'
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Directory,
    Link,
}

/// Builds the normalized archive, refusing entries as they come.
pub(crate) struct Writer {
    tar: tar::Builder<GzEncoder<File>>,
    limits: Limits,
    seen: HashMap<RelativePath, Kind>,
    links: HashSet<RelativePath>,
    /// Each link, its target as written, and the paths its target passes
    /// through: checked once every link is known.
    walks: Vec<(RelativePath, String, Vec<RelativePath>)>,
    entries: usize,
    unpacked: u64,
    counts: Normalized,
}

impl Writer {
    pub(crate) fn new(out: File, limits: Limits) -> Self {
        let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::default()));
        tar.mode(tar::HeaderMode::Deterministic);
        Writer {
            tar,
            limits,
            seen: HashMap::new(),
            links: HashSet::new(),
            walks: Vec::new(),
            entries: 0,
            unpacked: 0,
            counts: Normalized {
                files: 0,
                directories: 0,
                links: 0,
                unpacked_bytes: 0,
                upload_sha256: String::new(),
            },
        }
    }

    /// Checks `name` as a new entry of `kind`: counted, unique, and not
    /// below a link.
    fn place(&mut self, name: &[u8], kind: Kind) -> Result<RelativePath, Refused> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Refused::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        let path = RelativePath::parse(name, self.limits.max_path_bytes)?;
        let shown = || String::from_utf8_lossy(name).into_owned();
        if let Some(link) = path.ancestors().find(|a| self.links.contains(a)) {
            return Err(Refused::ThroughLink {
                entry: shown(),
                link: link.as_string(),
            });
        }
        for ancestor in path.ancestors() {
            match self.seen.get(&ancestor) {
                Some(Kind::File) => return Err(Refused::Duplicate { entry: shown() }),
                Some(_) => {}
                None => {
                    self.seen.insert(ancestor, Kind::Directory);
                }
            }
        }
        match (self.seen.get(&path), kind) {
            (Some(Kind::Directory), Kind::Directory) => {}
            (Some(_), _) => return Err(Refused::Duplicate { entry: shown() }),
            (None, _) => {
                self.seen.insert(path.clone(), kind);
            }
        }
        Ok(path)
    }

    pub(crate) fn directory(&mut self, name: &[u8]) -> Result<(), ArchiveError> {
        // `./` is the tree's own top, which `tar -C dir -cf - .` writes
        // first: nothing to add.
        if matches!(name, b"." | b"./") {
            return Ok(());
        }
        let path = self.place(name, Kind::Directory)?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        self.tar
            .append_data(&mut header, format!("{}/", path.as_string()), io::empty())?;
        self.counts.directories += 1;
        Ok(())
    }

    /// A file's content, read through the archive's reader: its length is
    /// what was read, never what a header claimed, and the budget of
    /// unpacked bytes bounds it.
    pub(crate) fn file(
        &mut self,
        name: &[u8],
        executable: bool,
        content: &mut dyn Read,
    ) -> Result<(), ArchiveError> {
        let path = self.place(name, Kind::File)?;
        let budget = self.limits.max_unpacked_bytes - self.unpacked;
        let mut spool = tempfile::tempfile()?;
        let copied = io::copy(&mut content.take(budget + 1), &mut spool)?;
        if copied > budget {
            return Err(Refused::TooLarge {
                limit: self.limits.max_unpacked_bytes,
            }
            .into());
        }
        self.unpacked += copied;
        spool.seek(SeekFrom::Start(0))?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(if executable { 0o755 } else { 0o644 });
        header.set_size(copied);
        self.tar.append_data(&mut header, path.as_string(), spool)?;
        self.counts.files += 1;
        Ok(())
    }

    /// A symbolic link; its target must land inside the tree.
    pub(crate) fn symlink(&mut self, name: &[u8], target: &[u8]) -> Result<(), ArchiveError> {
        let shown = String::from_utf8_lossy(name).into_owned();
        let target_text = std::str::from_utf8(target)
            .ok()
            .filter(|t| !t.chars().any(|c| c.is_control() || c == '\\'));
        let path = self.place(name, Kind::Link)?;
        let outside = || Refused::LinkOutside {
            entry: shown.clone(),
            target: String::from_utf8_lossy(target).into_owned(),
        };
        let target_text = target_text.ok_or_else(outside)?;
        let (_, passed) = path.resolve_link(target_text).ok_or_else(outside)?;
        self.links.insert(path.clone());
        self.walks
            .push((path.clone(), target_text.to_owned(), passed));
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        self.tar
            .append_link(&mut header, path.as_string(), target_text)?;
        self.counts.links += 1;
        Ok(())
    }

    /// A hard link; its target must be a file written earlier.
    pub(crate) fn hard_link(&mut self, name: &[u8], target: &[u8]) -> Result<(), ArchiveError> {
        let refused = || Refused::HardLinkOutside {
            entry: String::from_utf8_lossy(name).into_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
        };
        let target_path =
            RelativePath::parse(target, self.limits.max_path_bytes).map_err(|_| refused())?;
        if self.seen.get(&target_path) != Some(&Kind::File) {
            return Err(refused().into());
        }
        let path = self.place(name, Kind::File)?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Link);
        header.set_mode(0o644);
        header.set_size(0);
        self.tar
            .append_link(&mut header, path.as_string(), target_path.as_string())?;
        self.counts.links += 1;
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<Normalized, ArchiveError> {
        let Writer {
            tar,
            unpacked,
            mut counts,
            links,
            walks,
            ..
        } = self;
        for (link, target, passed) in walks {
            if passed.iter().any(|p| links.contains(p)) {
                return Err(Refused::LinkOutside {
                    entry: link.as_string(),
                    target,
                }
                .into());
            }
        }
        tar.into_inner()?.finish()?.sync_all()?;
        counts.unpacked_bytes = unpacked;
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str) -> Result<String, Refused> {
        RelativePath::parse(name.as_bytes(), 1024).map(|p| p.as_string())
    }

    #[test]
    fn names_resolve_inside_or_are_refused() {
        assert_eq!(parse("./src//main.rs").unwrap(), "src/main.rs");
        assert_eq!(parse("a/../b").unwrap(), "b");
        for (name, refused) in [
            ("../etc/passwd", "Escapes"),
            ("a/../../b", "Escapes"),
            ("/etc/passwd", "Absolute"),
            ("C:/Windows", "Absolute"),
            ("a\\..\\b", "BadName"),
            ("a\nb", "BadName"),
            (".", "BadName"),
            ("", "BadName"),
        ] {
            let err = parse(name).unwrap_err();
            assert!(format!("{err:?}").starts_with(refused), "{name}: {err:?}");
        }
        assert!(matches!(
            RelativePath::parse(&[b'a', 0xff], 1024),
            Err(Refused::BadName { .. })
        ));
        assert!(matches!(
            RelativePath::parse("a".repeat(20).as_bytes(), 10),
            Err(Refused::PathTooLong { .. })
        ));
    }

    #[test]
    fn links_must_land_inside() {
        let link = RelativePath::parse(b"bin/tool", 1024).unwrap();
        let (lands, passed) = link.resolve_link("../lib/tool.js").unwrap();
        assert_eq!(lands.as_string(), "lib/tool.js");
        let names: Vec<String> = passed.iter().map(RelativePath::as_string).collect();
        assert_eq!(names, ["bin", "lib"]);
        let (_, passed) = RelativePath::parse(b"y", 1024)
            .unwrap()
            .resolve_link("x/l/..")
            .unwrap();
        let names: Vec<String> = passed.iter().map(RelativePath::as_string).collect();
        assert_eq!(names, ["x", "x/l"], "the step out of x/l is seen");
        assert!(link.resolve_link("../../etc/passwd").is_none());
        assert!(link.resolve_link("/etc/passwd").is_none());
        assert!(link.resolve_link("").is_none());
    }
}
