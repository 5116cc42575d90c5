//! A filesystem that can lose power.
//!
//! `kill -9` cannot catch a missing fsync: the kernel keeps every page a
//! process wrote, synced or not. This FUSE filesystem keeps everything in
//! memory in two versions, what was written and what was made durable, and
//! [`PowerFs::power_loss`] throws away everything not made durable, as a
//! machine that loses power does:
//! - a file's contents become durable on `fsync`/`fdatasync` of that file;
//! - a directory's entries (created, renamed, removed names) become durable
//!   on `fsync` of that directory, as POSIX requires (some filesystems are
//!   more forgiving; this one is not).
//!
//! It can also fail every write with `EIO` on command, like a dying disk.
//! Files are opened with direct I/O so the kernel's page cache never serves
//! data that the filesystem has since dropped.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Attributes and entries are never cached by the kernel: after a power
/// loss it must ask again.
const NO_CACHE: Duration = Duration::ZERO;

enum Kind {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

impl Kind {
    fn empty_dir() -> Self {
        Self::Dir {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
        }
    }

    fn empty_file() -> Self {
        Self::File {
            data: Vec::new(),
            durable: Vec::new(),
        }
    }
}

struct Node {
    kind: Kind,
    perm: u16,
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    fail_writes: bool,
    /// Counters for the test's own evidence.
    file_syncs: u64,
    dir_syncs: u64,
}

impl State {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.nodes.get(&ino)?;
        let (kind, size) = match &node.kind {
            Kind::File { data, .. } => (FileType::RegularFile, data.len() as u64),
            Kind::Dir { .. } => (FileType::Directory, 0),
        };
        let now = SystemTime::now();
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm: node.perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn dir(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::Dir { entries, .. }) => Ok(entries),
            Some(Kind::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file(&mut self, ino: u64) -> Result<&mut Vec<u8>, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File { data, .. }) => Ok(data),
            Some(Kind::Dir { .. }) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    /// Adds a node named `name` under `parent`.
    fn add(&mut self, parent: u64, name: &OsStr, kind: Kind, perm: u16) -> Result<u64, Errno> {
        if self.fail_writes {
            return Err(Errno::EIO);
        }
        let ino = self.next_ino;
        let entries = self.dir(parent)?;
        if entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        entries.insert(name.to_owned(), ino);
        self.next_ino += 1;
        self.nodes.insert(ino, Node { kind, perm });
        Ok(ino)
    }

    /// Makes a node's current state durable.
    fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        if self.fail_writes {
            return Err(Errno::EIO);
        }
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File { data, durable }) => {
                durable.clone_from(data);
                self.file_syncs += 1;
            }
            Some(Kind::Dir { entries, durable }) => {
                durable.clone_from(entries);
                self.dir_syncs += 1;
            }
            None => return Err(Errno::ENOENT),
        }
        Ok(())
    }
}

/// The filesystem as FUSE sees it.
struct Fs {
    state: Arc<Mutex<State>>,
}

impl Fs {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn reply_entry(state: &State, ino: u64, reply: ReplyEntry) {
    match state.attr(ino) {
        Some(attr) => reply.entry(&NO_CACHE, &attr, Generation(0)),
        None => reply.error(Errno::ENOENT),
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.lock();
        match state.dir(parent.0).map(|e| e.get(name).copied()) {
            Ok(Some(ino)) => reply_entry(&state, ino, reply),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().attr(ino.0) {
            Some(attr) => reply.attr(&NO_CACHE, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.lock();
        if let Some(size) = size {
            if state.fail_writes {
                return reply.error(Errno::EIO);
            }
            match state.file(ino.0) {
                Ok(data) => data.resize(size as usize, 0),
                Err(e) => return reply.error(e),
            }
        }
        if let (Some(mode), Some(node)) = (mode, state.nodes.get_mut(&ino.0)) {
            node.perm = (mode & 0o7777) as u16;
        }
        match state.attr(ino.0) {
            Some(attr) => reply.attr(&NO_CACHE, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.lock();
        match state.add(parent.0, name, Kind::empty_dir(), (mode & 0o7777) as u16) {
            Ok(ino) => reply_entry(&state, ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.lock();
        match state.add(parent.0, name, Kind::empty_file(), (mode & 0o7777) as u16) {
            Ok(ino) => match state.attr(ino) {
                Some(attr) => reply.created(
                    &NO_CACHE,
                    &attr,
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::FOPEN_DIRECT_IO,
                ),
                None => reply.error(Errno::EIO),
            },
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.lock();
        if state.fail_writes {
            return reply.error(Errno::EIO);
        }
        match state.dir(parent.0).map(|e| e.remove(name)) {
            Ok(Some(_)) => reply.ok(),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.lock();
        let Ok(Some(ino)) = state.dir(parent.0).map(|e| e.get(name).copied()) else {
            return reply.error(Errno::ENOENT);
        };
        match state.dir(ino) {
            Ok(entries) if entries.is_empty() => {}
            Ok(_) => return reply.error(Errno::ENOTEMPTY),
            Err(e) => return reply.error(e),
        }
        if let Ok(entries) = state.dir(parent.0) {
            entries.remove(name);
        }
        reply.ok();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.lock();
        if state.fail_writes {
            return reply.error(Errno::EIO);
        }
        let moved = match state.dir(parent.0).map(|e| e.remove(name)) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        match state.dir(newparent.0) {
            Ok(entries) => {
                entries.insert(newname.to_owned(), moved);
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.lock().nodes.contains_key(&ino.0) {
            true => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            false => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.lock();
        match state.file(ino.0) {
            Ok(data) => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.lock();
        if state.fail_writes {
            return reply.error(Errno::EIO);
        }
        match state.file(ino.0) {
            Ok(data) => {
                let start = offset as usize;
                let end = start + bytes.len();
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[start..end].copy_from_slice(bytes);
                reply.written(bytes.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.lock().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut state = self.lock();
        let entries = match state.dir(ino.0) {
            Ok(entries) => entries.clone(),
            Err(e) => return reply.error(e),
        };
        let mut all = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (ino.0, FileType::Directory, OsString::from("..")),
        ];
        for (name, child) in entries {
            let kind = match state.nodes.get(&child).map(|n| &n.kind) {
                Some(Kind::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((child, kind, name));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.lock().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut state = self.lock();
        if state.fail_writes {
            return reply.error(Errno::EIO);
        }
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        match state.file(ino.0) {
            Ok(data) => {
                let end = (offset + length) as usize;
                if data.len() < end {
                    data.resize(end, 0);
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted power-loss filesystem; unmounted when dropped.
pub struct PowerFs {
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
}

impl PowerFs {
    /// Mounts an empty filesystem at `mountpoint` (an existing empty
    /// directory). Needs `/dev/fuse` and `fusermount3` (Debian: `fuse3`).
    pub fn mount(mountpoint: &Path) -> io::Result<PowerFs> {
        let root = Node {
            kind: Kind::empty_dir(),
            perm: 0o755,
        };
        let state = Arc::new(Mutex::new(State {
            nodes: HashMap::from([(INodeNo::ROOT.0, root)]),
            next_ino: INodeNo::ROOT.0 + 1,
            fail_writes: false,
            file_syncs: 0,
            dir_syncs: 0,
        }));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("exdaas-powerfs".into()),
            MountOption::DefaultPermissions,
        ];
        let fs = Fs {
            state: state.clone(),
        };
        let session = fuser::spawn_mount(fs, mountpoint, &config)?;
        Ok(PowerFs {
            state,
            session: Some(session),
        })
    }

    /// Mounts one at `mnt` inside a new temporary directory. Bind the three
    /// in this order: the mount then goes before the directory does.
    pub fn mount_temp() -> io::Result<(tempfile::TempDir, PowerFs, PathBuf)> {
        if !Path::new("/dev/fuse").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "/dev/fuse is missing: the power-loss tests need FUSE",
            ));
        }
        let root = tempfile::tempdir()?;
        let mnt = root.path().join("mnt");
        std::fs::create_dir(&mnt)?;
        let fs = PowerFs::mount(&mnt)?;
        Ok((root, fs, mnt))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops everything written since it was last made durable: file
    /// contents not fsynced, directory entries whose directory was not
    /// fsynced. Stop every process using the filesystem first, as a power
    /// loss would have. Returns how many files and directories lost
    /// something, as evidence that the loss was real.
    pub fn power_loss(&self) -> usize {
        let mut changed = 0;
        for node in self.lock().nodes.values_mut() {
            let lost = match &mut node.kind {
                Kind::File { data, durable } => {
                    std::mem::replace(data, durable.clone()) != *durable
                }
                Kind::Dir { entries, durable } => {
                    std::mem::replace(entries, durable.clone()) != *durable
                }
            };
            changed += usize::from(lost);
        }
        changed
    }

    /// From now on every write, sync and namespace change fails with EIO
    /// (reads still work), or, with `false`, works again.
    pub fn fail_writes(&self, fail: bool) {
        self.lock().fail_writes = fail;
    }

    /// How many file and directory syncs the filesystem has seen.
    pub fn syncs(&self) -> (u64, u64) {
        let state = self.lock();
        (state.file_syncs, state.dir_syncs)
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}
