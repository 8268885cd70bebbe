//! What the loader needs of an x86-64 ELF file: its program interpreter
//! (`PT_INTERP`) and, from its dynamic section (`PT_DYNAMIC`), the
//! libraries it names (`DT_NEEDED`) and where it says to look for them
//! (`DT_RPATH`, `DT_RUNPATH`). Pure: bytes in, facts or the reason they
//! cannot be read out; every offset is checked against the file's length.

/// The loader's view of one ELF file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfDeps {
    /// `PT_INTERP`: the loader an executable asks for; `None` for a static
    /// executable and for most shared libraries.
    pub interpreter: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH`, split at `:` (searched before `LD_LIBRARY_PATH`, and only
    /// when there is no `DT_RUNPATH`).
    pub rpath: Vec<String>,
    /// `DT_RUNPATH`, split at `:`.
    pub runpath: Vec<String>,
    /// `ET_DYN` or `ET_EXEC` with a dynamic section.
    pub dynamic: bool,
}

/// Dynamic section entries read at most (real files have a few dozen).
pub const DYNAMIC_ENTRIES_MAX: usize = 1 << 16;
/// Names longer than this in the string table are refused.
const NAME_MAX_BYTES: usize = 4096;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// One program header's fields the loader's view needs.
#[derive(Clone, Copy, Debug)]
struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    file_size: u64,
}

/// Reads the loader's view of `bytes`; `Err` says in words why the file
/// is not an x86-64 ELF executable or library this reader can follow.
pub fn read(bytes: &[u8]) -> Result<ElfDeps, String> {
    let file = File { bytes };
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file (a script? the guest runs ELF executables only)".into());
    }
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    match file.u16_at(16) {
        Some(2 | 3) => {}
        _ => return Err("an ELF file that is neither an executable nor a shared library".into()),
    }
    if file.u16_at(18) != Some(62) {
        return Err("an ELF file for another machine than x86-64".into());
    }
    let segments = file.segments()?;
    let mut deps = ElfDeps::default();
    for s in segments.iter().filter(|s| s.kind == PT_INTERP) {
        let interp = file.slice(s.offset, s.file_size)?;
        deps.interpreter = Some(String::from_utf8_lossy(interp).trim_end_matches('\0').to_string());
    }
    if let Some(dynamic) = segments.iter().find(|s| s.kind == PT_DYNAMIC) {
        deps.dynamic = true;
        file.read_dynamic(dynamic, &segments, &mut deps)?;
    }
    Ok(deps)
}

struct File<'a> {
    bytes: &'a [u8],
}

fn truncated() -> String {
    "a truncated ELF file".to_string()
}

impl File<'_> {
    fn u16_at(&self, at: usize) -> Option<u16> {
        self.bytes
            .get(at..at.checked_add(2)?)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32_at(&self, at: usize) -> Option<u32> {
        let b = self.bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64_at(&self, at: usize) -> Option<u64> {
        let b = self.bytes.get(at..at.checked_add(8)?)?;
        Some(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    fn slice(&self, offset: u64, len: u64) -> Result<&[u8], String> {
        let start = usize::try_from(offset).map_err(|_| truncated())?;
        let end = start
            .checked_add(usize::try_from(len).map_err(|_| truncated())?)
            .ok_or_else(truncated)?;
        self.bytes.get(start..end).ok_or_else(truncated)
    }

    fn segments(&self) -> Result<Vec<Segment>, String> {
        let phoff = usize::try_from(self.u64_at(32).ok_or_else(truncated)?).map_err(|_| truncated())?;
        let phentsize = usize::from(self.u16_at(54).ok_or_else(truncated)?);
        let phnum = usize::from(self.u16_at(56).ok_or_else(truncated)?);
        if phnum > 0 && phentsize < 56 {
            return Err("an ELF file with malformed program headers".into());
        }
        (0..phnum)
            .map(|i| {
                let at = phoff.checked_add(i * phentsize).ok_or_else(truncated)?;
                Ok(Segment {
                    kind: self.u32_at(at).ok_or_else(truncated)?,
                    offset: self.u64_at(at + 8).ok_or_else(truncated)?,
                    vaddr: self.u64_at(at + 16).ok_or_else(truncated)?,
                    file_size: self.u64_at(at + 32).ok_or_else(truncated)?,
                })
            })
            .collect()
    }

    /// The dynamic section's entries, up to `DT_NULL`; the string table
    /// found through the load segment that maps its address.
    fn read_dynamic(&self, dynamic: &Segment, segments: &[Segment], deps: &mut ElfDeps) -> Result<(), String> {
        let table = self.slice(dynamic.offset, dynamic.file_size)?;
        let entries: Vec<(u64, u64)> = table
            .chunks_exact(16)
            .take(DYNAMIC_ENTRIES_MAX)
            .map(|e| {
                let word = |at: usize| u64::from_le_bytes(e[at..at + 8].try_into().expect("8 bytes"));
                (word(0), word(8))
            })
            .take_while(|(tag, _)| *tag != DT_NULL)
            .collect();
        let value_of = |tag: u64| entries.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v);
        let names: Vec<(u64, u64)> = entries
            .iter()
            .copied()
            .filter(|(t, _)| matches!(*t, DT_NEEDED | DT_RPATH | DT_RUNPATH))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let strtab_vaddr =
            value_of(DT_STRTAB).ok_or("an ELF file whose dynamic section names libraries but has no string table")?;
        let strtab_size = value_of(DT_STRSZ).unwrap_or(0);
        let load = segments
            .iter()
            .find(|s| s.kind == PT_LOAD && s.vaddr <= strtab_vaddr && strtab_vaddr - s.vaddr < s.file_size)
            .ok_or("an ELF file whose string table is outside its loaded segments")?;
        let strtab_offset = strtab_vaddr - load.vaddr + load.offset;
        let strtab_len = strtab_size.min(load.file_size - (strtab_vaddr - load.vaddr));
        let strtab = self.slice(strtab_offset, strtab_len)?;
        for (tag, at) in names {
            let name = string_at(strtab, at)?;
            match tag {
                DT_NEEDED => deps.needed.push(name),
                DT_RPATH => deps.rpath.extend(split_path(&name)),
                _ => deps.runpath.extend(split_path(&name)),
            }
        }
        Ok(())
    }
}

/// The NUL-terminated string at `at` of a string table.
fn string_at(strtab: &[u8], at: u64) -> Result<String, String> {
    let start = usize::try_from(at)
        .ok()
        .filter(|s| *s < strtab.len())
        .ok_or_else(truncated)?;
    let rest = &strtab[start..];
    let len = rest
        .iter()
        .take(NAME_MAX_BYTES)
        .position(|&b| b == 0)
        .ok_or("an ELF file with an unterminated or overlong name in its string table")?;
    Ok(String::from_utf8_lossy(&rest[..len]).into_owned())
}

fn split_path(list: &str) -> impl Iterator<Item = String> + '_ {
    list.split(':').filter(|d| !d.is_empty()).map(String::from)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal x86-64 ELF executable: a load segment holding a string
    /// table, a dynamic section naming `needed` and a runpath, an interpreter.
    pub(crate) fn synthetic(needed: &[&str], runpath: Option<&str>, interp: Option<&str>) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let mut offsets = Vec::new();
        for name in needed.iter().copied().chain(runpath) {
            offsets.push(strtab.len() as u64);
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
        }
        let phnum = 2 + u16::from(interp.is_some());
        let headers_end = 64 + 56 * u64::from(phnum);
        let strtab_at = headers_end;
        let interp_at = strtab_at + strtab.len() as u64;
        let interp_bytes: Vec<u8> = interp.map(|i| [i.as_bytes(), b"\0"].concat()).unwrap_or_default();
        let dynamic_at = interp_at + interp_bytes.len() as u64;
        let mut dynamic = Vec::new();
        let mut entry = |tag: u64, value: u64| {
            dynamic.extend_from_slice(&tag.to_le_bytes());
            dynamic.extend_from_slice(&value.to_le_bytes());
        };
        for off in &offsets[..needed.len()] {
            entry(DT_NEEDED, *off);
        }
        if runpath.is_some() {
            entry(DT_RUNPATH, offsets[needed.len()]);
        }
        entry(DT_STRTAB, 0x40_0000 + strtab_at);
        entry(DT_STRSZ, strtab.len() as u64);
        entry(DT_NULL, 0);
        let total = dynamic_at + dynamic.len() as u64;
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[16] = 2;
        elf[18] = 62;
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54] = 56;
        elf[56..58].copy_from_slice(&phnum.to_le_bytes());
        let mut header = |kind: u32, offset: u64, vaddr: u64, size: u64| {
            let mut h = vec![0u8; 56];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&offset.to_le_bytes());
            h[16..24].copy_from_slice(&vaddr.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            elf.extend_from_slice(&h);
        };
        header(PT_LOAD, 0, 0x40_0000, total);
        header(PT_DYNAMIC, dynamic_at, 0x40_0000 + dynamic_at, dynamic.len() as u64);
        if interp.is_some() {
            header(PT_INTERP, interp_at, 0x40_0000 + interp_at, interp_bytes.len() as u64);
        }
        elf.extend_from_slice(&strtab);
        elf.extend_from_slice(&interp_bytes);
        elf.extend_from_slice(&dynamic);
        elf
    }

    #[test]
    fn needed_libraries_runpath_and_interpreter_are_read() {
        let elf = synthetic(
            &["libfoo.so.1", "libc.so.6"],
            Some("$ORIGIN/../lib:/opt/x"),
            Some("/lib64/ld-linux-x86-64.so.2"),
        );
        let deps = read(&elf).unwrap();
        assert_eq!(deps.needed, ["libfoo.so.1", "libc.so.6"]);
        assert_eq!(deps.runpath, ["$ORIGIN/../lib", "/opt/x"]);
        assert!(deps.rpath.is_empty());
        assert_eq!(deps.interpreter.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert!(deps.dynamic);
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let elf = synthetic(&["libfoo.so.1"], Some("/opt/x"), Some("/lib64/ld.so"));
        for len in 0..elf.len() {
            assert!(read(&elf[..len]).is_err(), "cut at {len} of {}", elf.len());
        }
    }

    #[test]
    fn the_host_loader_and_this_test_binary_are_read() {
        let me = read(&std::fs::read(std::env::current_exe().unwrap()).unwrap()).unwrap();
        if me.dynamic {
            assert!(me.needed.iter().any(|n| n.starts_with("libc.so")), "{me:?}");
        }
        let sh = read(&std::fs::read("/bin/sh").unwrap()).unwrap();
        assert!(sh.interpreter.unwrap().contains("ld-linux"));
        assert!(sh.needed.iter().any(|n| n.starts_with("libc.so")));
    }

    #[test]
    fn scripts_and_foreign_files_are_named() {
        assert!(read(b"#!/bin/sh\necho hi\n").unwrap_err().contains("script"));
        let mut elf = synthetic(&[], None, None);
        elf[18] = 183; // aarch64
        assert!(read(&elf).unwrap_err().contains("x86-64"));
    }
}
