"""The dlforge command line (`dlforge --help`)."""
