//! The reference interpreter against PyTorch on whole networks: resnet18 (torchvision, 10
//! classes, 3x32x32, batch 2) and the LSTM, GRU, custom-cell, char-rnn and transformer specs at
//! reduced sizes. Fixtures: `scripts/make_forward_fixtures.py`; the error metric and how weights
//! and inputs are made: `tests/forward_common/mod.rs`.

mod forward_common;

#[test]
fn networks_match_pytorch() {
    forward_common::check_directory("tests/fixtures/forward/networks");
}
