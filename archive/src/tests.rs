//! Hostile and honest archives, built in scratch directories (never on the
//! machine's own paths), normalized, and the result unpacked by the system's
//! `tar` to see what a server would get.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// One tar entry as a hostile archive may write it: any name, any type.
struct Raw<'a> {
    name: &'a str,
    kind: tar::EntryType,
    link: &'a str,
    data: &'a [u8],
    mode: u32,
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        name,
        kind: tar::EntryType::Regular,
        link: "",
        data,
        mode: 0o644,
    }
}

fn link<'a>(name: &'a str, kind: tar::EntryType, target: &'a str) -> Raw<'a> {
    Raw {
        name,
        kind,
        link: target,
        data: b"",
        mode: 0o777,
    }
}

/// Writes the entries' headers byte for byte: the tar crate's own path
/// setters refuse `..` and absolute names, which is what is being tested.
fn tar_gz(dir: &Path, entries: &[Raw]) -> PathBuf {
    let path = dir.join("upload.tar.gz");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut builder = tar::Builder::new(gz);
    for entry in entries {
        let mut header = tar::Header::new_old();
        let name = &mut header.as_old_mut().name;
        name[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
        let linkname = &mut header.as_old_mut().linkname;
        linkname[..entry.link.len()].copy_from_slice(entry.link.as_bytes());
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_size(entry.data.len() as u64);
        header.set_cksum();
        builder.append(&header, entry.data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
    path
}

fn normalize_in(
    dir: &Path,
    upload: &Path,
    format: Format,
    limits: Limits,
) -> Result<Normalized, ArchiveError> {
    normalize(upload, format, &dir.join("normalized.tar.gz"), limits)
}

fn refused(dir: &Path, entries: &[Raw]) -> Refused {
    let upload = tar_gz(dir, entries);
    let err = normalize_in(dir, &upload, Format::TarGz, Limits::default()).unwrap_err();
    assert!(
        !dir.join("normalized.tar.gz").exists(),
        "nothing is left of a refused archive"
    );
    match err {
        ArchiveError::Refused(refused) => refused,
        other => panic!("{other}"),
    }
}

/// Unpacks a normalized archive with the system's tar, as a server would.
fn unpack(dir: &Path) -> PathBuf {
    let target = dir.join("unpacked");
    std::fs::create_dir(&target).unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(dir.join("normalized.tar.gz"))
        .arg("--no-same-owner")
        .arg("-C")
        .arg(&target)
        .status()
        .unwrap();
    assert!(status.success());
    target
}

#[test]
fn an_honest_tar_gz_comes_out_whole_with_plain_modes() {
    let dir = tempfile::tempdir().unwrap();
    let entries = [
        Raw {
            name: "./",
            kind: tar::EntryType::Directory,
            link: "",
            data: b"",
            mode: 0o755,
        },
        Raw {
            name: "./app/",
            kind: tar::EntryType::Directory,
            link: "",
            data: b"",
            mode: 0o777,
        },
        file("app/server.js", b"console.log('hi')\n"),
        Raw {
            mode: 0o4755,
            ..file("app/run.sh", b"#!/bin/sh\n")
        },
        link("app/bin/run", tar::EntryType::Symlink, "../run.sh"),
        link("app/copy.js", tar::EntryType::Link, "app/server.js"),
        file("app/../README.md", b"# app\n"),
    ];
    let upload = tar_gz(dir.path(), &entries);
    let done = normalize_in(dir.path(), &upload, Format::TarGz, Limits::default()).unwrap();
    assert_eq!(
        (done.files, done.directories, done.links),
        (3, 1, 2),
        "{done:?}"
    );
    assert_eq!(done.unpacked_bytes, 18 + 10 + 6);
    assert_eq!(done.upload_sha256.len(), 64);
    let out = unpack(dir.path());
    assert_eq!(
        std::fs::read_to_string(out.join("app/copy.js")).unwrap(),
        "console.log('hi')\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("README.md")).unwrap(),
        "# app\n"
    );
    assert_eq!(
        std::fs::read_link(out.join("app/bin/run")).unwrap(),
        Path::new("../run.sh")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("app/run.sh"), 0o755, "setuid dropped, exec kept");
    assert_eq!(mode("app/server.js"), 0o644);
}

#[test]
fn every_way_out_is_refused_and_nothing_is_left() {
    use tar::EntryType::{Block, Char, Fifo, Link, Symlink};
    let cases: Vec<(Vec<Raw>, &str)> = vec![
        (vec![file("../evil", b"x")], "Escapes"),
        (vec![file("a/../../evil", b"x")], "Escapes"),
        (vec![file("/etc/evil", b"x")], "Absolute"),
        (vec![link("passwd", Symlink, "/etc/passwd")], "LinkOutside"),
        (vec![link("up", Symlink, "../../..")], "LinkOutside"),
        (vec![link("deep/up", Symlink, "../..")], "LinkOutside"),
        (vec![link("hard", Link, "/etc/passwd")], "HardLinkOutside"),
        (vec![link("hard", Link, "../outside")], "HardLinkOutside"),
        (
            vec![link("hard", Link, "later.txt"), file("later.txt", b"x")],
            "HardLinkOutside",
        ),
        (
            vec![link("sub", Symlink, "inside"), file("sub/file", b"x")],
            "ThroughLink",
        ),
        (
            vec![link("x/l", Symlink, ".."), link("y", Symlink, "x/l/..")],
            "LinkOutside",
        ),
        (vec![file("twice", b"a"), file("twice", b"b")], "Duplicate"),
        (vec![file("d", b"a"), file("d/under", b"b")], "Duplicate"),
        (vec![link("pipe", Fifo, "")], "Special"),
        (vec![link("tty", Char, "")], "Special"),
        (vec![link("disk", Block, "")], "Special"),
        (vec![file("bad\u{1}name", b"x")], "BadName"),
        (vec![file("win\\path", b"x")], "BadName"),
    ];
    for (entries, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name).collect();
        let refusal = refused(dir.path(), &entries);
        assert!(
            format!("{refusal:?}").starts_with(expected),
            "{names:?}: {refusal:?}"
        );
    }
}

#[test]
fn limits_bound_entries_and_unpacked_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // A small archive that unpacks to 8 MiB of zeros, against a 1 MiB budget.
    let zeros = vec![0u8; 8 * 1024 * 1024];
    let upload = tar_gz(dir.path(), &[file("bomb", &zeros)]);
    assert!(std::fs::metadata(&upload).unwrap().len() < 64 * 1024);
    let limits = Limits {
        max_unpacked_bytes: 1024 * 1024,
        ..Limits::default()
    };
    let err = normalize_in(dir.path(), &upload, Format::TarGz, limits).unwrap_err();
    assert!(
        matches!(err, ArchiveError::Refused(Refused::TooLarge { .. })),
        "{err}"
    );
    assert!(!dir.path().join("normalized.tar.gz").exists());

    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let many: Vec<Raw> = names.iter().map(|n| file(n, b"x")).collect();
    let upload = tar_gz(dir.path(), &many);
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let err = normalize_in(dir.path(), &upload, Format::TarGz, limits).unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::Refused(Refused::TooManyEntries { limit: 10 })
        ),
        "{err}"
    );
}

#[test]
fn garbage_is_malformed_and_formats_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let upload = dir.path().join("upload");
    std::fs::write(&upload, b"\x1f\x8bnot really gzip").unwrap();
    let err = normalize_in(dir.path(), &upload, Format::TarGz, Limits::default()).unwrap_err();
    assert!(
        matches!(err, ArchiveError::Refused(Refused::Malformed { .. })),
        "{err}"
    );
    let err = normalize_in(dir.path(), &upload, Format::Zip, Limits::default()).unwrap_err();
    assert!(
        matches!(err, ArchiveError::Refused(Refused::Malformed { .. })),
        "{err}"
    );
    assert_eq!(Format::sniff(b"PK\x03\x04rest"), Some(Format::Zip));
    assert_eq!(Format::sniff(&[0x1f, 0x8b, 8]), Some(Format::TarGz));
    assert_eq!(Format::sniff(b"<html>"), None);
}

fn zip_upload(dir: &Path, build: impl FnOnce(&mut zip::ZipWriter<std::fs::File>)) -> PathBuf {
    let path = dir.join("upload.zip");
    let mut writer = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    build(&mut writer);
    writer.finish().unwrap();
    path
}

#[test]
fn zips_are_checked_the_same_way() {
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o755);
    let dir = tempfile::tempdir().unwrap();
    let upload = zip_upload(dir.path(), |z| {
        z.add_directory("site/", options).unwrap();
        z.start_file("site/index.html", options).unwrap();
        z.write_all(b"<h1>hi</h1>\n").unwrap();
        z.add_symlink("site/home.html", "index.html", options)
            .unwrap();
    });
    let done = normalize_in(dir.path(), &upload, Format::Zip, Limits::default()).unwrap();
    assert_eq!(
        (done.files, done.directories, done.links),
        (1, 1, 1),
        "{done:?}"
    );
    let out = unpack(dir.path());
    assert_eq!(
        std::fs::read_to_string(out.join("site/home.html")).unwrap(),
        "<h1>hi</h1>\n"
    );

    for (what, build) in [
        (
            "Escapes",
            Box::new(|z: &mut zip::ZipWriter<std::fs::File>| {
                z.start_file("../evil.sh", options).unwrap();
                z.write_all(b"x").unwrap();
            }) as Box<dyn FnOnce(&mut zip::ZipWriter<std::fs::File>)>,
        ),
        (
            "LinkOutside",
            Box::new(|z: &mut zip::ZipWriter<std::fs::File>| {
                z.add_symlink("passwd", "/etc/passwd", options).unwrap();
            }),
        ),
        (
            "Absolute",
            Box::new(|z: &mut zip::ZipWriter<std::fs::File>| {
                z.start_file("/tmp/evil", options).unwrap();
                z.write_all(b"x").unwrap();
            }),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let upload = zip_upload(dir.path(), build);
        let err = normalize_in(dir.path(), &upload, Format::Zip, Limits::default()).unwrap_err();
        assert!(format!("{err:?}").contains(what), "{what}: {err:?}");
        assert!(!dir.path().join("normalized.tar.gz").exists());
    }
}

#[test]
fn a_built_zip_passes_normalize_and_walks_back_entry_by_entry() {
    let scratch = tempfile::tempdir().unwrap();
    let zip_path = scratch.path().join("site.zip");
    let mut zip = ZipBuilder::new(File::create(&zip_path).unwrap());
    zip.directory("site", 0o755).unwrap();
    zip.start_file("site/run.sh", 0o755).unwrap();
    zip.write(b"#!/bin/sh\n").unwrap();
    zip.start_file("site/index.html", 0o644).unwrap();
    zip.write(b"<h1>hi</h1>").unwrap();
    zip.symlink("site/home.html", "index.html").unwrap();
    zip.finish().unwrap();

    let out = scratch.path().join("site.tar.gz");
    let counts = normalize(&zip_path, Format::Zip, &out, Limits::default()).unwrap();
    assert_eq!((counts.files, counts.directories, counts.links), (2, 1, 1));

    let mut seen = Vec::new();
    normalized::each_entry(&out, |item| {
        seen.push(match item {
            normalized::Item::Directory { path } => format!("dir {path}"),
            normalized::Item::File {
                path,
                executable,
                content,
            } => {
                let mut text = String::new();
                content.read_to_string(&mut text).unwrap();
                format!("file {path} {executable} {text}")
            }
            normalized::Item::Symlink { path, target } => format!("link {path} -> {target}"),
            normalized::Item::HardLink { path, target } => format!("hard {path} -> {target}"),
        });
        Ok(())
    })
    .unwrap();
    assert_eq!(
        seen,
        [
            "dir site",
            "file site/run.sh true #!/bin/sh\n",
            "file site/index.html false <h1>hi</h1>",
            "link site/home.html -> index.html",
        ]
    );
}
