//! Printing command results to stdout. A reader that goes away early (`strait get all | head`)
//! is normal, not an error: unlike `println!`, these macros never panic on a closed pipe.

/// Writes to stdout, ignoring a closed pipe or any other write error (there is nowhere left to
/// report it).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// [`out!`] with a newline.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
