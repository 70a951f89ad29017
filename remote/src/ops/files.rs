//! Files on a server over SFTP: written atomically (a temporary file beside
//! the target, then a rename), with a mode, and read with a size limit.

use std::time::Duration;

use berth_config::{ExposeSecret, SecretString};
use berth_ssh::{Arg, ShellCommand};

use super::{On, OpError};

const DEADLINE: Duration = Duration::from_secs(60);

/// The temporary name beside `path` a write goes to before the rename.
fn temporary(path: &Arg) -> Result<Arg, OpError> {
    Ok(Arg::path(&format!(
        "{}.berth-{}",
        path.as_str(),
        ulid::Ulid::generate()
    ))?)
}

/// Writes `data` to `path` with `mode`: readers see the old file or the new
/// one, never half of it.
pub async fn put(on: &On<'_>, path: &Arg, data: &[u8], mode: i32) -> Result<(), OpError> {
    let staged = temporary(path)?;
    on.session.upload(data, &staged, mode).await?;
    let moved = on
        .run(
            "moving the file into place",
            &ShellCommand::new("chmod")
                .arg(&Arg::file_mode(mode))
                .arg(&staged)
                .raw("&& mv -f --")
                .arg(&staged)
                .arg(path),
            DEADLINE,
        )
        .await;
    if moved.is_err() {
        let _ = remove(on, &staged).await;
    }
    moved.map(|_| ())
}

/// Writes a secret (an env file, a key) to `path`, mode 0600, over SFTP:
/// it is never part of a command.
pub async fn put_secret(on: &On<'_>, path: &Arg, secret: &SecretString) -> Result<(), OpError> {
    put(on, path, secret.expose_secret().as_bytes(), 0o600).await
}

/// Reads `path`, refusing a file larger than `max_bytes`.
pub async fn get(on: &On<'_>, path: &Arg, max_bytes: u64) -> Result<Vec<u8>, OpError> {
    Ok(on.session.download(path, max_bytes).await?)
}

/// Removes the file at `path`, if it is there.
pub async fn remove(on: &On<'_>, path: &Arg) -> Result<(), OpError> {
    on.run(
        "removing a file",
        &ShellCommand::new("rm -f --").arg(path),
        DEADLINE,
    )
    .await
    .map(|_| ())
}

/// Creates `path` and its parents; the last one gets `mode`.
pub async fn make_dir(on: &On<'_>, path: &Arg, mode: i32) -> Result<(), OpError> {
    on.run(
        "creating a directory",
        &ShellCommand::new("mkdir -p --")
            .arg(path)
            .raw("&& chmod")
            .arg(&Arg::file_mode(mode))
            .arg(path),
        DEADLINE,
    )
    .await
    .map(|_| ())
}

/// Removes the tree at `path` (one of Berth's own directories; the caller
/// names it from the server's data directory, never from user input).
pub async fn remove_tree(on: &On<'_>, path: &Arg) -> Result<(), OpError> {
    on.run(
        "removing a directory",
        &ShellCommand::new("rm -rf --").arg(path),
        Duration::from_secs(600),
    )
    .await
    .map(|_| ())
}

/// Unpacks the gzipped tar at `archive` into the empty directory `dest`.
/// The archive is Berth's own normalized one (every entry checked before it
/// left the api: no links out, no absolute paths, no `..`), and tar is told
/// not to restore owners or modes beyond the user's umask.
pub async fn unpack(on: &On<'_>, archive: &Arg, dest: &Arg) -> Result<(), OpError> {
    on.run(
        "unpacking the archive",
        &ShellCommand::new("rm -rf --")
            .arg(dest)
            .raw("&& mkdir -p --")
            .arg(dest)
            .raw("&& tar -xzf")
            .arg(archive)
            .raw("--no-same-owner --no-same-permissions -C")
            .arg(dest),
        Duration::from_secs(600),
    )
    .await
    .map(|_| ())
}

/// Free bytes on the file system holding `path` (its nearest existing
/// parent), as an unprivileged user may use them.
pub async fn free_bytes(on: &On<'_>, path: &Arg) -> Result<u64, OpError> {
    let output = on
        .run(
            "measuring free disk",
            &ShellCommand::new("true;")
                .set_var("p", path)
                .raw("; while [ ! -e \"$p\" ]; do p=$(dirname -- \"$p\"); done; df -Pk -- \"$p\" | awk 'NR==2 {print $4}'"),
            DEADLINE,
        )
        .await?;
    output
        .stdout
        .trim()
        .parse::<u64>()
        .map(|kib| kib * 1024)
        .map_err(|_| OpError::Unreadable {
            what: "df",
            detail: output.stdout.chars().take(200).collect(),
        })
}
