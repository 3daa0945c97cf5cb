//! Legal-desk tests: order verification with every rejection reason.

mod orders;
