//! `keel hospital …`: the commands in process on keel-test-support's ward ([`in_process`]:
//! what each prints and does), and the real binary on the embedded queue and hospital under
//! `--data-dir` ([`binary`]).

mod binary;
mod in_process;
