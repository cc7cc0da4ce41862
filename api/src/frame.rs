//! One frame of a symbolized stack: the Go function, file and line the
//! reporter found for a program counter in the binary's pclntab, or the
//! program counter alone when the binary does not describe it.
//!
//! A frame stays typed from the kernel record to its sinks; its text
//! (`function /abs/path/file.go:12`, or `0x4a1b2c`) is written only where
//! the contract is text: the JSON lines (its `Serialize`) and the stacks of
//! a `MapViolation` record (its `Display`). `FromStr` reads that text back.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// Where a goroutine was, innermost first in a stack.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Frame {
    /// A Go function at a source line (`file` as the binary records it,
    /// usually an absolute path).
    Source {
        function: String,
        file: String,
        line: u32,
    },
    /// A program counter the binary does not describe.
    Address(u64),
}

impl Frame {
    /// A frame at a source line.
    pub fn source(function: impl Into<String>, file: impl Into<String>, line: u32) -> Frame {
        Frame::Source {
            function: function.into(),
            file: file.into(),
            line,
        }
    }

    /// The Go function, if the binary names it.
    pub fn function(&self) -> Option<&str> {
        match self {
            Frame::Source { function, .. } => Some(function),
            Frame::Address(_) => None,
        }
    }

    /// Whether the frame is inside the Go runtime (`runtime.…`,
    /// `internal/…`), not at a call site of the program's own code.
    pub fn is_runtime(&self) -> bool {
        self.function().is_some_and(is_runtime_function)
    }

    /// `function file.go:12`: the file without its folders (for columns,
    /// labels and messages); an address as it is.
    pub fn short(&self) -> String {
        match self {
            Frame::Source {
                function,
                file,
                line,
            } => {
                let name = file.rsplit('/').next().unwrap_or(file);
                format!("{function} {name}:{line}")
            }
            Frame::Address(_) => self.to_string(),
        }
    }
}

/// Whether Go function `name` belongs to the runtime (the same test for a
/// typed frame and for a frame's text, which starts with its function).
pub(crate) fn is_runtime_function(name: &str) -> bool {
    name.starts_with("runtime.") || name.starts_with("internal/")
}

/// `function /abs/path/file.go:12`, or `0x4a1b2c`.
impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Source {
                function,
                file,
                line,
            } => write!(f, "{function} {file}:{line}"),
            Frame::Address(pc) => write!(f, "{pc:#x}"),
        }
    }
}

/// As its text (the JSON lines' `stack` entries).
impl Serialize for Frame {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Text that is not a frame's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAFrame(pub String);

impl fmt::Display for NotAFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a stack frame (`function file:line` or `0x…`)",
            self.0
        )
    }
}

impl std::error::Error for NotAFrame {}

/// Reads a frame's text back. A Go function name may hold spaces (the
/// runtime's `type:.eq.struct { … }`), so the file is what follows the
/// last space: writing the frame read gives the same text again.
impl FromStr for Frame {
    type Err = NotAFrame;

    fn from_str(text: &str) -> Result<Frame, NotAFrame> {
        if let Some(pc) = text
            .strip_prefix("0x")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        {
            return Ok(Frame::Address(pc));
        }
        let (place, line) = text
            .rsplit_once(':')
            .ok_or_else(|| NotAFrame(text.to_owned()))?;
        let (function, file) = place
            .rsplit_once(' ')
            .ok_or_else(|| NotAFrame(text.to_owned()))?;
        let line = line.parse().map_err(|_| NotAFrame(text.to_owned()))?;
        Ok(Frame::source(function, file, line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deleter() -> Frame {
        Frame::source("main.deleter", "/src/app/main.go", 26)
    }

    #[test]
    fn a_frame_writes_todays_text() {
        assert_eq!(deleter().to_string(), "main.deleter /src/app/main.go:26");
        assert_eq!(Frame::Address(0x4a_1b2c).to_string(), "0x4a1b2c");
        assert_eq!(
            serde_json::to_string(&[deleter(), Frame::Address(0x4a_1b2c)]).expect("serializable"),
            r#"["main.deleter /src/app/main.go:26","0x4a1b2c"]"#
        );
    }

    #[test]
    fn the_short_form_drops_the_folders() {
        assert_eq!(deleter().short(), "main.deleter main.go:26");
        assert_eq!(
            Frame::source("main.(*Cart).Put", "cart.go", 7).short(),
            "main.(*Cart).Put cart.go:7"
        );
        assert_eq!(Frame::Address(0x4a_1b2c).short(), "0x4a1b2c");
    }

    #[test]
    fn runtime_frames_are_told_from_the_programs_own() {
        let runtime = Frame::source("runtime.mapdelete_fast64", "/go/src/runtime/map.go", 1);
        let internal = Frame::source("internal/runtime/maps.fatal", "/go/src/x.go", 1);
        assert!(runtime.is_runtime() && internal.is_runtime());
        // A program's own package named like the runtime's is not it.
        let own = Frame::source("example.com/runtime.F", "/src/f.go", 1);
        assert!(!own.is_runtime() && !deleter().is_runtime());
        assert!(!Frame::Address(0x4a_1b2c).is_runtime());
        assert_eq!(runtime.function(), Some("runtime.mapdelete_fast64"));
        assert_eq!(Frame::Address(1).function(), None);
    }

    #[test]
    fn text_reads_back_into_the_same_frame() {
        let equality = Frame::source("type:.eq.struct { A int }", "<autogenerated>", 1);
        for frame in [deleter(), Frame::Address(0x4a_1b2c), equality] {
            let text = frame.to_string();
            assert_eq!(text.parse::<Frame>(), Ok(frame.clone()), "{text}");
            let json = serde_json::to_value(&frame).expect("serializable");
            assert_eq!(json.as_str(), Some(text.as_str()));
        }
        for text in [
            "",
            "main.f",
            "main.f /a.go",
            "main.f /a.go:x",
            "0x",
            "/a.go:1",
        ] {
            assert_eq!(text.parse::<Frame>(), Err(NotAFrame(text.to_owned())));
        }
    }
}
