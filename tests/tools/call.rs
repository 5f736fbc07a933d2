use crate::sluice;
