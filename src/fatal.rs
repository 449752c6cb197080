//! Fatal error reports that neither allocate nor unwind: used where the heap
//! detects misuse it cannot recover from (a pointer it does not own).

/// A fixed-capacity, stack-only message buffer; what does not fit is cut.
pub(crate) struct Message {
    buf: [u8; 4096],
    len: usize,
}

impl Message {
    pub(crate) const fn new() -> Self {
        Self {
            buf: [0; 4096],
            len: 0,
        }
    }

    pub(crate) fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    /// `v` in decimal.
    pub(crate) fn push_dec(&mut self, mut v: usize) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    /// One byte as two hex digits.
    pub(crate) fn push_byte(&mut self, b: u8) {
        let hex = b"0123456789abcdef";
        self.push(&[hex[(b >> 4) as usize], hex[(b & 0xf) as usize]]);
    }

    /// Writes what is buffered to standard error and empties the buffer.
    pub(crate) fn flush(&mut self) {
        write_stderr(&self.buf[..self.len]);
        self.len = 0;
    }

    /// Writes the message to standard error and aborts the process.
    pub(crate) fn abort(&self) -> ! {
        write_stderr(&self.buf[..self.len]);
        std::process::abort()
    }

    /// `v` as `0x` and 16 (or 8) hex digits.
    pub(crate) fn push_hex(&mut self, v: usize) {
        let mut digits = [0u8; 2 + 2 * size_of::<usize>()];
        digits[0] = b'0';
        digits[1] = b'x';
        for (i, d) in digits[2..].iter_mut().enumerate() {
            let nibble = (v >> (4 * (2 * size_of::<usize>() - 1 - i))) & 0xf;
            *d = b"0123456789abcdef"[nibble];
        }
        self.push(&digits);
    }
}

/// Formatting into a message flushes it to standard error whenever it is
/// full, so long reports (statistics) come out whole.
impl core::fmt::Write for Message {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for chunk in s.as_bytes().chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.push(chunk);
        }
        Ok(())
    }
}

/// Writes `bytes` to standard error without allocating.
pub(crate) fn write_stderr(bytes: &[u8]) {
    #[cfg(all(unix, not(miri)))]
    {
        // SAFETY: writes initialised bytes from a live buffer to fd 2.
        unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
    }
    #[cfg(any(not(unix), miri))]
    {
        use std::io::Write;
        let _ = std::io::stderr().write_all(bytes);
    }
}

/// Reports that `ptr`, given to `what`, is not a live block of a pymalloc
/// heap, then aborts the process.
#[cold]
#[inline(never)]
pub(crate) fn bad_pointer(what: &str, ptr: *const u8) -> ! {
    report(what, ptr, "is not a live block of a pymalloc heap")
}

/// Reports that `ptr`, given to `what`, belongs to another pymalloc heap,
/// then aborts the process.
#[cold]
#[inline(never)]
pub(crate) fn wrong_heap(what: &str, ptr: *const u8) -> ! {
    report(what, ptr, "belongs to another pymalloc heap")
}

/// Reports misuse of `block` (a `kind` block of `size` bytes) that the
/// heap caught before it corrupted anything: the block `reason`. Then
/// aborts the process.
#[cold]
#[inline(never)]
pub(crate) fn misuse(block: *const u8, size: usize, kind: &str, reason: &str) -> ! {
    let mut m = Message::new();
    m.push(b"pymalloc: fatal error: ");
    m.push(kind.as_bytes());
    m.push(b" block ");
    m.push_hex(block.addr());
    m.push(b" (");
    m.push_dec(size);
    m.push(b" bytes) ");
    m.push(reason.as_bytes());
    m.push(b"\n");
    m.abort()
}

fn report(what: &str, ptr: *const u8, reason: &str) -> ! {
    let mut m = Message::new();
    m.push(b"pymalloc: fatal error in ");
    m.push(what.as_bytes());
    m.push(b": pointer ");
    m.push_hex(ptr.addr());
    m.push(b" ");
    m.push(reason.as_bytes());
    m.push(b"\n");
    m.abort()
}

/// Reports that environment variable `name` holds `value`, which is none of
/// `expected`, then aborts (as CPython does for a bad `PYTHONMALLOC`).
#[cold]
#[inline(never)]
#[cfg_attr(not(all(unix, not(miri))), allow(dead_code))]
pub(crate) fn bad_setting(name: &str, value: &[u8], expected: &str) -> ! {
    bad_variable(
        name.as_bytes(),
        value,
        &["is not a known allocator; expected ", expected],
    )
}

/// Reports that environment variable `name` holds `value`, which the
/// concatenated `complaint` describes, then aborts.
#[cold]
#[inline(never)]
#[cfg_attr(not(all(unix, not(miri))), allow(dead_code))]
pub(crate) fn bad_variable(name: &[u8], value: &[u8], complaint: &[&str]) -> ! {
    let mut m = Message::new();
    m.push(b"pymalloc: fatal error: ");
    m.push(name);
    m.push(b"=");
    m.push(&value[..value.len().min(64)]);
    m.push(b" ");
    for part in complaint {
        m.push(part.as_bytes());
    }
    m.push(b"\n");
    m.abort()
}
