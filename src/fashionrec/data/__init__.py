"""Readers for the formats fashion retailers have: H&M Kaggle layout, image folders, Fashion-MNIST IDX, event logs; and
the synthetic shop `fashionrec demo` generates (`synthetic`)."""
