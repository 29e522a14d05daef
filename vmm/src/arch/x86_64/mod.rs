//! x86_64 boot set-up: memory layout, boot protocols (PVH and Linux boot protocol), e820,
//! GDT, registers, CPUID, MSRs, LAPIC and the MP table.
