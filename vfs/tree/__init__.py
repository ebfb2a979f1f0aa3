"""The mounted tree: nodes, VirtualFile (a file made of segments) and building the tree from the views."""
