//! Tar headers byte for byte as Go's `archive/tar` writes them for imgpkg.
//!
//! imgpkg builds `tar.Header{Name, Size, Mode, ModTime: time.Time{}, Typeflag}` and lets Go pick
//! the format: USTAR when every field fits (long ASCII names split into prefix/name), PAX
//! otherwise. Matching that encoding exactly (Go's checksum field is `NNNNNN\0 `, not the
//! `NNNNNNN\0` the `tar` crate writes) makes our diff_id equal to imgpkg's for the same tree,
//! so a bundle pushed by either tool has the same uncompressed content.

const BLOCK: usize = 512;
const NAME_SIZE: usize = 100;
const PREFIX_SIZE: usize = 155;

/// Typeflag of a regular file.
pub(super) const TYPE_REG: u8 = b'0';
/// Typeflag of a directory.
pub(super) const TYPE_DIR: u8 = b'5';
const TYPE_PAX: u8 = b'x';

/// The header block(s) of one entry: a PAX extended header (with its data) when the entry needs
/// one, then the entry's own header. File data and its padding are the caller's.
pub(super) fn header(name: &str, typeflag: u8, mode: u32, size: u64) -> Vec<u8> {
    let size_fits = fits_in_octal(12, size);
    let ustar_split = if name.len() <= NAME_SIZE && name.is_ascii() {
        Some(("", name))
    } else {
        split_ustar_path(name)
    };
    match (ustar_split, size_fits) {
        (Some((prefix, suffix)), true) => {
            let mut block = v7_plus(suffix, typeflag, mode, size);
            format_string(&mut block[345..500], prefix);
            set_magic_and_checksum(&mut block);
            block.to_vec()
        }
        // Go records the path whenever USTAR's name field alone cannot hold it, even if only
        // the size forced PAX.
        _ => pax(
            name,
            typeflag,
            mode,
            size,
            !name.is_ascii() || name.len() > NAME_SIZE,
            size_fits,
        ),
    }
}

/// The two zero blocks that end an archive (Go pads to nothing more).
pub(super) const END_OF_ARCHIVE: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// Zero bytes that pad `size` bytes of file data to a whole block.
pub(super) fn padding(size: u64) -> &'static [u8] {
    const ZEROS: [u8; BLOCK] = [0; BLOCK];
    let rem = (size % BLOCK as u64) as usize;
    if rem == 0 { &[] } else { &ZEROS[..BLOCK - rem] }
}

fn pax(
    name: &str,
    typeflag: u8,
    mode: u32,
    size: u64,
    needs_path: bool,
    size_fits: bool,
) -> Vec<u8> {
    // Go sorts the record keys; "path" < "size".
    let mut records = String::new();
    if needs_path {
        records.push_str(&pax_record("path", name));
    }
    if !size_fits {
        records.push_str(&pax_record("size", &size.to_string()));
    }
    let (dir, file) = match name.rfind('/') {
        Some(i) => (&name[..=i], &name[i + 1..]),
        None => ("", name),
    };
    let mut pax_name = to_ascii(&path_join(&[dir, "PaxHeaders.0", file]));
    pax_name.truncate(NAME_SIZE);
    let pax_name = pax_name.trim_end_matches('/');

    let mut out = Vec::with_capacity(3 * BLOCK + records.len());
    let mut block = [0u8; BLOCK];
    block[156] = TYPE_PAX;
    format_string(&mut block[0..100], pax_name);
    format_octal(&mut block[100..108], 0);
    format_octal(&mut block[108..116], 0);
    format_octal(&mut block[116..124], 0);
    format_octal(&mut block[124..136], records.len() as u64);
    format_octal(&mut block[136..148], 0);
    set_magic_and_checksum(&mut block);
    out.extend_from_slice(&block);
    out.extend_from_slice(records.as_bytes());
    out.extend_from_slice(padding(records.len() as u64));

    let mut block = v7_plus(&to_ascii(name), typeflag, mode, size);
    set_magic_and_checksum(&mut block);
    out.extend_from_slice(&block);
    out
}

/// Go's `templateV7Plus`: every field but magic, prefix and checksum.
fn v7_plus(name: &str, typeflag: u8, mode: u32, size: u64) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    block[156] = typeflag;
    format_string(&mut block[0..100], name);
    format_octal(&mut block[100..108], u64::from(mode));
    format_octal(&mut block[108..116], 0); // uid
    format_octal(&mut block[116..124], 0); // gid
    format_octal(&mut block[124..136], size);
    format_octal(&mut block[136..148], 0); // mtime: time.Time{} is written as the epoch
    // uname and gname are empty: already NUL.
    format_octal(&mut block[329..337], 0); // devmajor
    format_octal(&mut block[337..345], 0); // devminor
    block
}

fn set_magic_and_checksum(block: &mut [u8; BLOCK]) {
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    format_octal(&mut block[148..155], sum);
    block[155] = b' ';
}

/// Go's `formatter.formatString`, including its fix-up of a trailing slash cut in half.
fn format_string(field: &mut [u8], s: &str) {
    let bytes = s.as_bytes();
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
    if bytes.len() < field.len() {
        field[bytes.len()] = 0;
    }
    if bytes.len() > field.len() && field[field.len() - 1] == b'/' {
        let kept = s[..field.len() - 1].trim_end_matches('/').len();
        field[kept] = 0;
    }
}

/// Go's `formatter.formatOctal`: zero-padded octal leaving room for a NUL; a value that does
/// not fit is written as 0 (the PAX record carries it).
fn format_octal(field: &mut [u8], value: u64) {
    let value = if fits_in_octal(field.len(), value) {
        value
    } else {
        0
    };
    let digits = format!("{value:o}");
    let width = field.len() - 1;
    let text = format!("{digits:0>width$}");
    format_string(field, &text);
}

fn fits_in_octal(field_len: usize, value: u64) -> bool {
    let bits = (field_len - 1) * 3;
    field_len >= 22 || value < (1u64 << bits)
}

/// Go's `splitUSTARPath`: a long ASCII name split at a `/` into a ≤155-byte prefix and a
/// ≤100-byte name.
fn split_ustar_path(name: &str) -> Option<(&str, &str)> {
    let mut length = name.len();
    if length <= NAME_SIZE || !name.is_ascii() {
        return None;
    } else if length > PREFIX_SIZE + 1 {
        length = PREFIX_SIZE + 1;
    } else if name.as_bytes()[length - 1] == b'/' {
        length -= 1;
    }
    let i = name[..length].rfind('/')?;
    let (prefix_len, suffix_len) = (i, name.len() - i - 1);
    if i == 0 || suffix_len > NAME_SIZE || suffix_len == 0 || prefix_len > PREFIX_SIZE {
        return None;
    }
    Some((&name[..i], &name[i + 1..]))
}

/// Go's `formatPAXRecord`: `"<len> <key>=<value>\n"` where len counts itself.
fn pax_record(key: &str, value: &str) -> String {
    let mut size = key.len() + value.len() + 3;
    size += size.to_string().len();
    let mut record = format!("{size} {key}={value}\n");
    if record.len() != size {
        size = record.len();
        record = format!("{size} {key}={value}\n");
    }
    record
}

/// Go's `toASCII`: drops every non-ASCII character (and NUL).
fn to_ascii(s: &str) -> String {
    s.chars().filter(|&c| c.is_ascii() && c != '\0').collect()
}

/// Go's `path.Join` for the relative, `.`/`..`-free names used here.
fn path_join(parts: &[&str]) -> String {
    let joined: Vec<&str> = parts
        .iter()
        .flat_map(|p| p.split('/'))
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if joined.is_empty() {
        ".".to_owned()
    } else {
        joined.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(block: &[u8], range: std::ops::Range<usize>) -> &[u8] {
        &block[range]
    }

    #[test]
    fn ustar_header_fields_are_go_formatted() {
        let block = header("config/values.yml", TYPE_REG, 0o600, 1234);
        assert_eq!(block.len(), BLOCK);
        assert_eq!(&block[..18], b"config/values.yml\0");
        assert_eq!(field(&block, 100..108), b"0000600\0");
        assert_eq!(field(&block, 108..116), b"0000000\0");
        assert_eq!(field(&block, 124..136), b"00000002322\0");
        assert_eq!(field(&block, 136..148), b"00000000000\0");
        assert_eq!(block[156], b'0');
        assert_eq!(field(&block, 257..265), b"ustar\x0000");
        assert_eq!(field(&block, 329..345), b"0000000\x000000000\0");
        // Go: six octal digits, NUL, space.
        let sum: u32 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        assert_eq!(field(&block, 148..156), format!("{sum:06o}\0 ").as_bytes());
    }

    #[test]
    fn long_ascii_names_use_the_ustar_prefix() {
        let dir = "d".repeat(120);
        let name = format!("{dir}/file.yml");
        let block = header(&name, TYPE_REG, 0o600, 0);
        assert_eq!(block.len(), BLOCK);
        assert_eq!(&block[..9], b"file.yml\0");
        assert_eq!(&block[345..465], dir.as_bytes());
        assert_eq!(block[465], 0);
    }

    #[test]
    fn unsplittable_and_non_ascii_names_get_a_pax_path_record() {
        for name in ["x".repeat(101), "dir/naïve.yml".to_owned()] {
            let blocks = header(&name, TYPE_REG, 0o600, 7);
            assert_eq!(blocks.len(), 3 * BLOCK, "{name}");
            assert_eq!(blocks[156], b'x');
            let record = pax_record("path", &name);
            assert_eq!(&blocks[BLOCK..BLOCK + record.len()], record.as_bytes());
            // The entry's own header carries the name made ASCII and cut to 100 bytes.
            let own = &blocks[2 * BLOCK..];
            let ascii = to_ascii(&name);
            let kept = ascii.len().min(NAME_SIZE);
            assert_eq!(&own[..kept], &ascii.as_bytes()[..kept]);
            assert_eq!(own[156], b'0');
        }
        let blocks = header("dir/naïve.yml", TYPE_REG, 0o600, 7);
        assert_eq!(&blocks[..26], b"dir/PaxHeaders.0/nave.yml\0");
    }

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record("path", "a"), "9 path=a\n");
        // 4 + 92 + 3 = 99, plus 2 digits = 101, which takes 3 digits: 102.
        let value = "v".repeat(92);
        let record = pax_record("path", &value);
        assert_eq!(record.len(), 102);
        assert!(record.starts_with("102 path="));
    }

    #[test]
    fn sizes_beyond_eight_gibibytes_go_to_pax() {
        let size = 1u64 << 33;
        let blocks = header("big", TYPE_REG, 0o600, size);
        assert_eq!(blocks.len(), 3 * BLOCK);
        let record = pax_record("size", &size.to_string());
        assert_eq!(&blocks[BLOCK..BLOCK + record.len()], record.as_bytes());
        assert_eq!(&blocks[2 * BLOCK + 124..2 * BLOCK + 136], b"00000000000\0");
    }

    #[test]
    fn padding_fills_the_last_block() {
        assert_eq!(padding(0).len(), 0);
        assert_eq!(padding(1).len(), 511);
        assert_eq!(padding(512).len(), 0);
        assert_eq!(padding(513).len(), 511);
    }
}
