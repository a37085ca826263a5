"""edgecache."""
