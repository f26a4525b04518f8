"""The operator's browser console: web server and page (ROS-free; the node adapts it)."""
