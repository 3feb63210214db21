//! Where a guest's bytes come from: a [`ByteSource`] (a stored disk read
//! through the chunk cache, or a file in tests), and [`Window`]s over a
//! range of one (a partition, a logical volume's segment map) that the
//! file system readers see as a whole device.

use std::io;
use std::sync::Arc;

/// Random access to a disk's bytes. Reads past the end are errors.
pub trait ByteSource: Send + Sync {
    /// The size in bytes.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset`.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl ByteSource for std::fs::File {
    fn len(&self) -> u64 {
        self.metadata().map_or(0, |m| m.len())
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ByteSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| past_end(offset, buf.len()))?;
        let end = start.checked_add(buf.len()).ok_or_else(|| past_end(offset, buf.len()))?;
        let bytes = self.get(start..end).ok_or_else(|| past_end(offset, buf.len()))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

fn past_end(offset: u64, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{len} bytes at {offset} lie past the end of the device"),
    )
}

/// How a device's bytes map onto its disk: one range (a partition), or
/// several (a logical volume's linear segments), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Where the range starts on the device.
    pub device_offset: u64,
    /// Where it lies on the disk.
    pub disk_offset: u64,
    pub len: u64,
}

/// A device made of ranges of a disk: reads are bounded to them.
#[derive(Clone)]
pub struct Window {
    disk: Arc<dyn ByteSource>,
    extents: Arc<[Extent]>,
    len: u64,
}

impl Window {
    /// The bytes `[offset, offset + len)` of `disk`; an error if they do
    /// not lie within it.
    pub fn range(disk: Arc<dyn ByteSource>, offset: u64, len: u64) -> io::Result<Window> {
        Self::mapped(
            disk,
            vec![Extent {
                device_offset: 0,
                disk_offset: offset,
                len,
            }],
        )
    }

    /// A device of `extents` (contiguous from 0, in order), each within
    /// `disk`.
    pub fn mapped(disk: Arc<dyn ByteSource>, extents: Vec<Extent>) -> io::Result<Window> {
        let mut next = 0u64;
        for e in &extents {
            let end = e.disk_offset.checked_add(e.len);
            if e.device_offset != next || end.is_none_or(|end| end > disk.len()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} bytes at {} of a {}-byte disk: past its end or out of order",
                        e.len,
                        e.disk_offset,
                        disk.len()
                    ),
                ));
            }
            next += e.len;
        }
        Ok(Window {
            disk,
            extents: extents.into(),
            len: next,
        })
    }

    /// The disk below.
    pub fn disk(&self) -> &Arc<dyn ByteSource> {
        &self.disk
    }

    /// Where on the disk the device's byte `offset` lies.
    pub fn disk_offset(&self, offset: u64) -> Option<u64> {
        let i = self.extents.partition_point(|e| e.device_offset + e.len <= offset);
        let e = self.extents.get(i)?;
        (offset >= e.device_offset).then(|| e.disk_offset + (offset - e.device_offset))
    }
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window").field("extents", &self.extents).finish()
    }
}

impl ByteSource for Window {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).ok_or_else(|| past_end(offset, buf.len()))?;
        if end > self.len {
            return Err(past_end(offset, buf.len()));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let i = self.extents.partition_point(|e| e.device_offset + e.len <= at);
            let e = self.extents.get(i).ok_or_else(|| past_end(at, buf.len() - done))?;
            let within = at - e.device_offset;
            let n = ((e.len - within) as usize).min(buf.len() - done);
            self.disk.read_exact_at(e.disk_offset + within, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

/// A position in a window, for parsers that want `Read + Seek`. Reads
/// fail once `budget` bytes have been read: a parser led in circles by
/// damaged metadata (a B-tree node naming its own ancestor) stops there.
pub struct Cursor {
    device: Window,
    position: u64,
    budget: u64,
}

impl Cursor {
    pub fn new(device: Window, budget: u64) -> Cursor {
        Cursor {
            device,
            position: 0,
            budget,
        }
    }
}

impl io::Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.device.len().saturating_sub(self.position)) as usize;
        self.budget = self.budget.checked_sub(n as u64).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "read more than the structure can hold: a loop in damaged metadata",
            )
        })?;
        self.device.read_exact_at(self.position, &mut buf[..n])?;
        self.position += n as u64;
        Ok(n)
    }
}

impl io::Seek for Cursor {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let position = match to {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => self.device.len().checked_add_signed(d),
            io::SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        self.position = position.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.position)
    }
}

/// `len` bytes at `offset` of `source`, as a vector (for the small
/// structures the readers parse).
pub fn read_vec(source: &dyn ByteSource, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    source.read_exact_at(offset, &mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_reads_its_extents_in_order_and_nothing_past_them() {
        let disk: Arc<dyn ByteSource> = Arc::new((0u8..=255).collect::<Vec<u8>>());
        let w = Window::mapped(
            Arc::clone(&disk),
            vec![
                Extent {
                    device_offset: 0,
                    disk_offset: 200,
                    len: 10,
                },
                Extent {
                    device_offset: 10,
                    disk_offset: 20,
                    len: 5,
                },
            ],
        )
        .unwrap();
        assert_eq!(w.len(), 15);
        let mut buf = [0u8; 8];
        w.read_exact_at(6, &mut buf).unwrap();
        assert_eq!(buf, [206, 207, 208, 209, 20, 21, 22, 23]);
        assert!(w.read_exact_at(10, &mut buf).is_err());
        assert_eq!(w.disk_offset(12), Some(22));
        assert!(Window::range(Arc::clone(&disk), 250, 10).is_err());
        assert!(Window::range(disk, u64::MAX - 1, 10).is_err());
    }
}
