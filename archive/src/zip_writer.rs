//! A `.zip` written an entry at a time, for the file manager's compress:
//! links are stored as links (never followed), modes kept.

use std::fs::File;
use std::io::{self, Write};

use zip::write::SimpleFileOptions;

pub struct ZipBuilder {
    zip: zip::ZipWriter<File>,
}

fn io_error(e: zip::result::ZipError) -> io::Error {
    match e {
        zip::result::ZipError::Io(e) => e,
        other => io::Error::other(other),
    }
}

fn options(mode: u32) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(mode & 0o7777)
        // Sizes are known only once written; zip64 headers keep files past
        // 4 GiB readable.
        .large_file(true)
}

impl ZipBuilder {
    pub fn new(out: File) -> Self {
        ZipBuilder {
            zip: zip::ZipWriter::new(out),
        }
    }

    /// `name` is relative, `/`-separated.
    pub fn directory(&mut self, name: &str, mode: u32) -> io::Result<()> {
        self.zip
            .add_directory(format!("{name}/"), options(mode).large_file(false))
            .map_err(io_error)
    }

    /// Starts a file; its bytes follow through [`ZipBuilder::write`].
    pub fn start_file(&mut self, name: &str, mode: u32) -> io::Result<()> {
        self.zip.start_file(name, options(mode)).map_err(io_error)
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.zip.write_all(data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.zip
            .add_symlink(name, target, options(0o777).large_file(false))
            .map_err(io_error)
    }

    pub fn finish(self) -> io::Result<File> {
        self.zip.finish().map_err(io_error)
    }
}
