//! Unit tests of the pull: digests, containment, caps and the swap.

use std::io::Write as _;

use super::unpack::*;
use super::*;

/// The production unpack, from the layer in a file as a pull from an OCI layout leaves
/// it: not yet checked against its descriptor.
fn unpack_into(
    gz: &[u8],
    descriptor: &image::Descriptor,
    diff_id: &str,
    out: &Path,
    reference: &str,
    limits: &PullLimits,
) -> Result<super::unpack::Unpacked, BundleError> {
    use std::io::Seek as _;
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(gz).unwrap();
    file.rewind().unwrap();
    let layer = Layer {
        file,
        checked: false,
    };
    super::unpack_into(layer, descriptor, diff_id, out, reference, limits)
}

#[test]
fn unsafe_names_are_refused() {
    assert_eq!(safe_relative_path(b"./a/b").unwrap(), PathBuf::from("a/b"));
    assert_eq!(safe_relative_path(b".").unwrap(), PathBuf::new());
    assert!(safe_relative_path(b"../etc/passwd").is_err());
    assert!(safe_relative_path(b"a/../../b").is_err());
    assert!(safe_relative_path(b"/etc/passwd").is_err());
}

/// A tar with the given raw entries, gzip'd.
fn layer(entries: &[(&str, tar::EntryType, &[u8])]) -> (Vec<u8>, String) {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, data) in entries {
        let mut header = tar::Header::new_gnu();
        // set_path refuses '..'; write the raw name as a hostile archive would.
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(0o600);
        header.set_size(data.len() as u64);
        if kind.is_symlink() {
            header.set_link_name("/etc/passwd").unwrap();
        }
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let diff_id = sha256_digest(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut gz, &tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// The manifest's descriptor of `blob`.
fn descriptor(blob: &[u8]) -> image::Descriptor {
    image::Descriptor {
        media_type: image::LAYER_MEDIA_TYPE.to_owned(),
        digest: sha256_digest(blob),
        size: blob.len() as u64,
    }
}

#[test]
fn a_layer_that_is_not_the_manifests_never_lands() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("previous"), "kept").unwrap();
    // A well-formed layer with a valid diff_id, but not the blob the manifest names.
    let (gz, diff_id) = layer(&[("cfg/a.yml", tar::EntryType::Regular, b"a: 1\n")]);
    let named = descriptor(b"the blob that was pushed");
    let err = unpack_into(&gz, &named, &diff_id, &out, "r", &PullLimits::default()).unwrap_err();
    assert!(err.to_string().contains(&named.digest), "{err}");
    assert_eq!(fs::read_to_string(out.join("previous")).unwrap(), "kept");
    assert!(!out.join("cfg").exists());
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1);

    // Right digest, wrong size: refused too.
    let mut sized = descriptor(&gz);
    sized.size += 1;
    let err = unpack_into(&gz, &sized, &diff_id, &out, "r", &PullLimits::default()).unwrap_err();
    assert!(err.to_string().contains("the manifest says"), "{err}");
    assert!(!out.join("cfg").exists());
}

#[test]
fn nested_directories_are_created_once_and_a_file_cannot_be_a_parent() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (gz, diff_id) = layer(&[
        ("a/b/c/one.yml", tar::EntryType::Regular, b"1"),
        ("a/b/two.yml", tar::EntryType::Regular, b"2"),
        ("a/d/", tar::EntryType::Directory, b""),
        ("a/d/three.yml", tar::EntryType::Regular, b"3"),
        ("a/b/c/four.yml", tar::EntryType::Regular, b"4"),
    ]);
    let unpacked = unpack_into(
        &gz,
        &descriptor(&gz),
        &diff_id,
        &out,
        "r",
        &PullLimits::default(),
    )
    .unwrap();
    assert_eq!(unpacked.files, 4);
    for (path, data) in [
        ("a/b/c/one.yml", "1"),
        ("a/b/two.yml", "2"),
        ("a/d/three.yml", "3"),
        ("a/b/c/four.yml", "4"),
    ] {
        assert_eq!(fs::read_to_string(out.join(path)).unwrap(), data, "{path}");
    }

    let (gz, diff_id) = layer(&[
        ("a", tar::EntryType::Regular, b"file"),
        ("a/b.yml", tar::EntryType::Regular, b"under a file"),
    ]);
    let err = unpack_into(
        &gz,
        &descriptor(&gz),
        &diff_id,
        &dir.path().join("out2"),
        "r",
        &PullLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, BundleError::Io { .. }), "{err}");
    assert!(!dir.path().join("out2").exists());
}

#[test]
fn a_large_file_is_copied_whole() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Spans several copy buffers and ends mid-buffer.
    let data: Vec<u8> = (0..COPY_BUFFER * 3 + 12345)
        .map(|i| (i % 251) as u8)
        .collect();
    let (gz, diff_id) = layer(&[("big.bin", tar::EntryType::Regular, &data)]);
    unpack_into(
        &gz,
        &descriptor(&gz),
        &diff_id,
        &out,
        "r",
        &PullLimits::default(),
    )
    .unwrap();
    assert_eq!(fs::read(out.join("big.bin")).unwrap(), data);
}

#[test]
fn escaping_entries_fail_the_pull_and_keep_the_old_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("previous"), "kept").unwrap();
    let (gz, diff_id) = layer(&[
        ("ok.yml", tar::EntryType::Regular, b"x"),
        ("../escape", tar::EntryType::Regular, b"pwned"),
    ]);
    let err = unpack_into(
        &gz,
        &descriptor(&gz),
        &diff_id,
        &out,
        "r",
        &PullLimits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, BundleError::UnsafePath { path, .. } if path == "../escape"),
        "{err}"
    );
    assert!(!dir.path().join("escape").exists());
    assert_eq!(fs::read_to_string(out.join("previous")).unwrap(), "kept");
    // No staging directory is left behind.
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1);
}

/// Links are not written but cost as much to read as files: they count against
/// `--max-files`, and what is kept of them is twenty names, not every name.
#[test]
fn a_layer_of_links_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    for i in 0..50 {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        // GNU long names: a name may be far longer than what is kept of it.
        let name = format!("{}{i}", "l".repeat(300));
        builder
            .append_link(&mut header, &name, "/etc/passwd")
            .unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let diff_id = sha256_digest(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    let limits = |max_files| PullLimits {
        max_files,
        ..PullLimits::default()
    };
    let unpacked = unpack_into(
        &gz,
        &descriptor(&gz),
        &diff_id,
        &dir.path().join("a"),
        "r",
        &limits(50),
    )
    .unwrap();
    assert_eq!((unpacked.files, unpacked.links), (0, 50));
    assert_eq!(unpacked.skipped.len(), super::unpack::NAMED_LINKS);
    assert!(unpacked.skipped.iter().all(|n| n.len() == 256));
    let err = unpack_into(
        &gz,
        &descriptor(&gz),
        &diff_id,
        &dir.path().join("b"),
        "r",
        &limits(49),
    )
    .unwrap_err();
    assert!(err.to_string().contains("files and links"), "{err}");
}

#[test]
fn links_are_skipped_and_the_diff_id_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (gz, diff_id) = layer(&[
        (".", tar::EntryType::Directory, b""),
        ("link", tar::EntryType::Symlink, b""),
        ("cfg/a.yml", tar::EntryType::Regular, b"a: 1\n"),
    ]);
    let unpacked = unpack_into(
        &gz,
        &descriptor(&gz),
        &diff_id,
        &out,
        "r",
        &PullLimits::default(),
    )
    .unwrap();
    assert_eq!(
        (unpacked.files, unpacked.skipped, unpacked.links),
        (1, vec!["link".to_owned()], 1)
    );
    assert!(fs::symlink_metadata(out.join("link")).is_err());
    assert_eq!(fs::read_to_string(out.join("cfg/a.yml")).unwrap(), "a: 1\n");

    let wrong = sha256_digest(b"something else");
    let err = unpack_into(
        &gz,
        &descriptor(&gz),
        &wrong,
        &dir.path().join("out2"),
        "r",
        &PullLimits::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("the config says"), "{err}");
    assert!(!dir.path().join("out2").exists());
}

fn small(max_bytes: u64, max_files: u64, max_dirs: u64) -> PullLimits {
    PullLimits {
        max_bytes,
        max_files,
        max_dirs,
    }
}

/// gzip of `tar` followed by `trailing` bytes inside the same stream (what a bomb hides
/// after the end of the archive); the diff_id is honest.
fn gz_with_trailing(tar: &[u8], trailing: usize) -> (Vec<u8>, String) {
    let mut stream = tar.to_vec();
    stream.resize(tar.len() + trailing, 0);
    let diff_id = sha256_digest(&stream);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut gz, &stream).unwrap();
    (gz.finish().unwrap(), diff_id)
}

#[test]
fn a_gzip_bomb_stops_at_the_cap_and_keeps_the_old_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("previous"), "kept").unwrap();
    // 8 MiB of zeros in a file: a few KiB compressed, honest digests.
    let zeros = vec![0u8; 8 << 20];
    let (gz, diff_id) = layer(&[("bomb", tar::EntryType::Regular, &zeros)]);
    assert!(gz.len() < 1 << 20, "the bomb is small: {} bytes", gz.len());
    let err = unpack_into(
        &gz,
        &descriptor(&gz),
        &diff_id,
        &out,
        "r",
        &small(1 << 20, 10, 10),
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            BundleError::Limit {
                what: "bytes of files",
                flag: "--max-bytes",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(fs::read_to_string(out.join("previous")).unwrap(), "kept");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no staging left"
    );

    // The same zeros after the end of a valid archive: nothing is written, but inflating
    // them is paid for only up to the stream cap.
    let (tar_gz, _) = layer(&[("a", tar::EntryType::Regular, b"a")]);
    let tar = {
        let mut d = flate2::read::GzDecoder::new(&tar_gz[..]);
        let mut v = Vec::new();
        io::Read::read_to_end(&mut d, &mut v).unwrap();
        v
    };
    let (gz, diff_id) = gz_with_trailing(&tar, 8 << 20);
    let err = unpack_into(
        &gz,
        &descriptor(&gz),
        &diff_id,
        &out,
        "r",
        &small(1 << 10, 10, 10),
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            BundleError::Limit {
                what: "bytes in the layer's tar stream",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(fs::read_to_string(out.join("previous")).unwrap(), "kept");
}

#[test]
fn directories_and_files_are_capped_explicit_or_implied() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..300).map(|i| format!("d{i}/")).collect();
    let entries: Vec<(&str, tar::EntryType, &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), tar::EntryType::Directory, &b""[..]))
        .collect();
    let (gz, diff_id) = layer(&entries);
    let out = dir.path().join("dirs");
    let err = unpack_into(
        &gz,
        &descriptor(&gz),
        &diff_id,
        &out,
        "r",
        &small(1 << 20, 10, 100),
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            BundleError::Limit {
                what: "directories",
                limit: 100,
                ..
            }
        ),
        "{err}"
    );
    assert!(!out.exists());

    // Directories implied by file paths count too.
    let (gz, diff_id) = layer(&[("a/b/c/d/e/f", tar::EntryType::Regular, b"x")]);
    let err = unpack_into(
        &gz,
        &descriptor(&gz),
        &diff_id,
        &out,
        "r",
        &small(1 << 20, 10, 3),
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            BundleError::Limit {
                what: "directories",
                ..
            }
        ),
        "{err}"
    );

    let (gz, diff_id) = layer(&[
        ("1", tar::EntryType::Regular, b"x"),
        ("2", tar::EntryType::Regular, b"x"),
        ("3", tar::EntryType::Regular, b"x"),
    ]);
    let err = unpack_into(
        &gz,
        &descriptor(&gz),
        &diff_id,
        &out,
        "r",
        &small(1 << 20, 2, 10),
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            BundleError::Limit {
                what: "files and links",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn outputs_that_hold_the_user_s_files_are_refused() {
    let cwd = std::env::current_dir().unwrap();
    let mut refused = vec![
        PathBuf::from("."),
        PathBuf::from(".."),
        PathBuf::from("/"),
        PathBuf::from("./"),
        cwd.clone(),
        cwd.join("sub/../"),
    ];
    if let Some(parent) = cwd.parent() {
        refused.push(parent.to_owned());
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        refused.push(PathBuf::from(home));
    }
    for output in refused {
        let err = refuse_unsafe_output(&output).unwrap_err();
        assert!(
            err.to_string().contains("refusing to pull into"),
            "{output:?}: {err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    refuse_unsafe_output(&dir.path().join("new")).unwrap();
    refuse_unsafe_output(dir.path()).unwrap();
}

#[test]
fn a_relative_output_is_swapped_in_beside_itself() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("previous"), "replaced").unwrap();
    let (gz, diff_id) = layer(&[("cfg/a.yml", tar::EntryType::Regular, b"a: 1\n")]);
    unpack_into(
        &gz,
        &descriptor(&gz),
        &diff_id,
        &out,
        "r",
        &PullLimits::default(),
    )
    .unwrap();
    assert!(!out.join("previous").exists());
    assert_eq!(fs::read_to_string(out.join("cfg/a.yml")).unwrap(), "a: 1\n");
    // Only the output is left: the old tree and the staging directory are gone.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Whatever the names, links and kinds of a layer's members, a pull writes only
    /// inside its output, and never panics.
    #[test]
    fn a_pull_never_reaches_outside_its_output(
        members in super::super::untar::testing::members()
    ) {
        use super::super::untar::testing::{Sandbox, raw_tar};
        let tar = raw_tar(&members);
        let diff_id = sha256_digest(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let sandbox = Sandbox::new();
        let _ = unpack_into(
            &gz,
            &descriptor(&gz),
            &diff_id,
            &sandbox.target(),
            "r",
            &PullLimits::default(),
        );
        sandbox.check();
    }
}

/// The pulled images.yml is read back to point it at relocated images: within the size
/// `copy` allows it, before any request is made.
#[tokio::test]
async fn a_huge_images_lock_is_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join(".imgpkg")).unwrap();
    let file = fs::File::create(dir.path().join(".imgpkg/images.yml")).unwrap();
    file.set_len(MAX_IMAGES_LOCK_BYTES + 1).unwrap();
    let registry = crate::registry::Registry::new(Default::default()).unwrap();
    let bundle = crate::registry::parse_reference("registry.invalid/bundle:1").unwrap();
    let err = localize_images_lock(&registry, &bundle, dir.path())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("an ImagesLock may take"), "{err}");
}
