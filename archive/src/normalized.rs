//! Walking an archive [`normalize`](crate::normalize) wrote, to unpack it
//! somewhere else (a server, over SFTP) entry by entry.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

/// One entry of a normalized archive. Paths are relative, `/`-separated,
/// without `.` or `..`; a file's parents may have no entry of their own.
pub enum Item<'a> {
    Directory {
        path: String,
    },
    File {
        path: String,
        executable: bool,
        content: &'a mut dyn Read,
    },
    /// Its target resolves inside the tree (normalize checked).
    Symlink {
        path: String,
        target: String,
    },
    /// Its target is a file earlier in the archive.
    HardLink {
        path: String,
        target: String,
    },
}

fn text(bytes: &[u8]) -> io::Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a name is not UTF-8"))
}

/// Hands each entry of the normalized `.tar.gz` at `path` to `visit`, in
/// the archive's order; `visit`'s first error stops the walk.
pub fn each_entry(
    path: &Path,
    mut visit: impl FnMut(Item<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let mut archive = tar::Archive::new(GzDecoder::new(BufReader::new(File::open(path)?)));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = text(&entry.path_bytes())?;
        let link = || -> io::Result<String> {
            match entry.link_name_bytes() {
                Some(target) => text(&target),
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a link without a target",
                )),
            }
        };
        let item = match entry.header().entry_type() {
            tar::EntryType::Directory => Item::Directory {
                path: name.trim_end_matches('/').to_owned(),
            },
            tar::EntryType::Symlink => Item::Symlink {
                target: link()?,
                path: name,
            },
            tar::EntryType::Link => Item::HardLink {
                target: link()?,
                path: name,
            },
            _ => {
                let executable = entry.header().mode()? & 0o111 != 0;
                visit(Item::File {
                    path: name,
                    executable,
                    content: &mut entry,
                })?;
                continue;
            }
        };
        visit(item)?;
    }
    Ok(())
}
