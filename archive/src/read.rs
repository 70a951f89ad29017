//! Reading each format's entries into the [`Writer`](crate::entry::Writer).

use std::fs::File;
use std::io::{BufReader, Read};

use flate2::read::MultiGzDecoder;

use crate::entry::Writer;
use crate::{ArchiveError, Refused};

fn malformed(format: &'static str, e: impl std::fmt::Display) -> ArchiveError {
    Refused::Malformed {
        format,
        reason: e.to_string(),
    }
    .into()
}

/// A `.tar.gz`: the tar crate joins GNU long names and PAX paths, so each
/// entry's name is the one `tar` would write to.
pub(crate) fn tar_gz(upload: File, writer: &mut Writer) -> Result<(), ArchiveError> {
    const FORMAT: &str = ".tar.gz";
    let mut archive = tar::Archive::new(MultiGzDecoder::new(BufReader::new(upload)));
    for entry in archive.entries().map_err(|e| malformed(FORMAT, e))? {
        let mut entry = entry.map_err(|e| malformed(FORMAT, e))?;
        let name = entry.path_bytes().into_owned();
        let shown = || String::from_utf8_lossy(&name).into_owned();
        let special = |kind| -> ArchiveError {
            Refused::Special {
                entry: shown(),
                kind,
            }
            .into()
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = entry.header().mode().map_err(|e| malformed(FORMAT, e))?;
                writer.file(&name, mode & 0o111 != 0, &mut entry)?;
            }
            tar::EntryType::Directory => writer.directory(&name)?,
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                writer.symlink(&name, &target)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                writer.hard_link(&name, &target)?;
            }
            tar::EntryType::Char => return Err(special("character device")),
            tar::EntryType::Block => return Err(special("block device")),
            tar::EntryType::Fifo => return Err(special("named pipe")),
            tar::EntryType::GNUSparse => return Err(special("sparse file")),
            // Headers that only describe the next entry (the tar crate
            // folds long names and PAX paths into it) carry nothing to write.
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            _ => return Err(special("entry of an unknown type")),
        }
    }
    Ok(())
}

/// Unix file type bits of a zip entry's external attributes.
const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// A `.zip`: names as stored; a Unix symlink is an entry whose mode says
/// so and whose content is its target.
pub(crate) fn zip(upload: File, writer: &mut Writer) -> Result<(), ArchiveError> {
    const FORMAT: &str = ".zip";
    let mut archive =
        zip::ZipArchive::new(BufReader::new(upload)).map_err(|e| malformed(FORMAT, e))?;
    for index in 0..archive.len() {
        let entry = archive
            .by_index_raw(index)
            .map_err(|e| malformed(FORMAT, e))?;
        let name = entry.name_raw().to_vec();
        if entry.encrypted() {
            return Err(Refused::Encrypted {
                entry: String::from_utf8_lossy(&name).into_owned(),
            }
            .into());
        }
        drop(entry);
        let mut entry = archive.by_index(index).map_err(|e| malformed(FORMAT, e))?;
        let mode = entry.unix_mode().unwrap_or(0);
        let kind = mode & S_IFMT;
        if kind == S_IFLNK {
            // A link's target is a short path; more is not a link.
            let mut target = Vec::new();
            (&mut entry)
                .take(4097)
                .read_to_end(&mut target)
                .map_err(|e| malformed(FORMAT, e))?;
            writer.symlink(&name, &target)?;
        } else if entry.is_dir() || kind == S_IFDIR {
            writer.directory(&name)?;
        } else if kind == 0 || kind == S_IFREG {
            writer.file(&name, mode & 0o111 != 0, &mut entry)?;
        } else {
            return Err(Refused::Special {
                entry: String::from_utf8_lossy(&name).into_owned(),
                kind: "special file",
            }
            .into());
        }
    }
    Ok(())
}
