//! Legacy devices: the 8250 serial console and the i8042 controller (reset line, CTR).

mod console_output;
mod i8042;
mod serial;
mod stdin_input;

pub use console_output::{ConsoleMetrics, ConsoleOutput, ConsoleWatch};
pub use i8042::I8042;
pub use serial::{EventFdTrigger, SerialConsole};
pub use stdin_input::SerialInput;
